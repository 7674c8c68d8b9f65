#include <catch2/catch.hpp>

#include <cmath>
#include <hgad/model/class_groups.hpp>
#include <string>
#include <vector>

namespace Catch {
template <>
struct StringMaker<hgad::ClassGroup> {
  static std::string convert(const hgad::ClassGroup& g) { return hgad::to_config_line(g); }
};
}  // namespace Catch

namespace class_groups_test {

namespace {

using Confusion = std::vector<std::vector<double>>;

hgad::ModelConfig config_of(const std::vector<std::string>& classes) {
  hgad::ModelConfig c;
  c.levels = {{8, 2, 2}};
  c.class_names = classes;
  c.features.backbone = "none";
  return c;
}

}  // namespace

TEST_CASE("suggest_class_groups joins classes that give each other the threshold, through chains",
          "[model]") {
  const auto c = config_of({"pcb1", "kolektor", "pcb2", "pcb3", "tile"});
  // pcb1 and pcb2 share (0.21 + 0.35) / 2 = 0.28, pcb2 and pcb3 (0.30 + 0.02) / 2 = 0.16; pcb1
  // and pcb3 only 0.05, and join through pcb2. kolektor and tile share 0.015.
  const Confusion confusion = {
      {0.73, 0.00, 0.21, 0.05, 0.01}, {0.00, 0.97, 0.00, 0.00, 0.03},
      {0.35, 0.00, 0.34, 0.30, 0.01}, {0.05, 0.00, 0.02, 0.93, 0.00},
      {0.00, 0.00, 0.00, 0.00, 1.00},
  };
  const auto groups = hgad::suggest_class_groups(c, confusion);
  REQUIRE(groups.size() == 1);
  CHECK(groups[0] == hgad::ClassGroup{"pcb", {"pcb1", "pcb2", "pcb3"}});
  CHECK(hgad::to_config_line(groups[0]) == "group.pcb = pcb1, pcb2, pcb3");

  // A higher threshold leaves pcb3 out; one above every share suggests nothing.
  CHECK(hgad::suggest_class_groups(c, confusion, 0.2) ==
        std::vector<hgad::ClassGroup>{{"pcb", {"pcb1", "pcb2"}}});
  CHECK(hgad::suggest_class_groups(c, confusion, 0.5).empty());
}

TEST_CASE("suggest_class_groups links a pair at exactly the threshold and not below it",
          "[model]") {
  const auto c = config_of({"tile_a", "tile_b", "wood"});
  const Confusion at = {{0.9, 0.1, 0.0}, {0.1, 0.9, 0.0}, {0.0, 0.0, 1.0}};
  CHECK(hgad::suggest_class_groups(c, at, 0.1) ==
        std::vector<hgad::ClassGroup>{{"tile", {"tile_a", "tile_b"}}});
  const Confusion below = {{0.9, 0.1, 0.0}, {0.0999, 0.9001, 0.0}, {0.0, 0.0, 1.0}};
  CHECK(hgad::suggest_class_groups(c, below, 0.1).empty());
}

TEST_CASE("suggest_class_groups names a group by a free stem of its folders, else groupN",
          "[model]") {
  // Stems too short ("" for a and b) or taken (the folder "tile") give group1, group2, ...
  const auto c = config_of({"a", "b", "tile", "tile_1", "tile_2", "wood-x", "wood-y"});
  Confusion confusion(7, std::vector<double>(7, 0.0));
  for (std::size_t k = 0; k < 7; ++k) confusion[k][k] = 0.5;
  auto link = [&](std::size_t x, std::size_t y) { confusion[x][y] = confusion[y][x] = 0.5; };
  link(0, 1);
  link(3, 4);
  link(5, 6);
  const auto groups = hgad::suggest_class_groups(c, confusion);
  CHECK(groups == std::vector<hgad::ClassGroup>{{"group1", {"a", "b"}},
                                                {"group2", {"tile_1", "tile_2"}},
                                                {"wood", {"wood-x", "wood-y"}}});
}

TEST_CASE(
    "suggest_class_groups expands a class that is a group, and regrouped trains the new groups",
    "[model]") {
  hgad::ModelConfig c = config_of({});
  c.class_groups = {{"pcb", {"pcb1", "pcb2"}}, {"tiles", {"tile1", "tile2"}}};
  const std::vector<std::string> folders = {"kolektor", "pcb1", "pcb2", "pcb4", "tile1", "tile2"};
  c.set_classes_from_folders(folders);
  REQUIRE(c.class_names == std::vector<std::string>{"kolektor", "pcb", "pcb4", "tiles"});
  const Confusion confusion = {
      {1.0, 0.0, 0.0, 0.0}, {0.0, 0.6, 0.4, 0.0}, {0.0, 0.3, 0.7, 0.0}, {0.0, 0.0, 0.0, 1.0}};
  const auto groups = hgad::suggest_class_groups(c, confusion);
  // "pcb" is the name of a class of this model, so the new group takes group1.
  REQUIRE(groups == std::vector<hgad::ClassGroup>{{"group1", {"pcb1", "pcb2", "pcb4"}}});

  const hgad::ModelConfig next = hgad::regrouped(c, groups, folders);
  CHECK(next.class_groups == std::vector<hgad::ClassGroup>{{"tiles", {"tile1", "tile2"}},
                                                           {"group1", {"pcb1", "pcb2", "pcb4"}}});
  CHECK(next.class_names == std::vector<std::string>{"kolektor", "group1", "tiles"});
  CHECK(next.class_of("pcb4") == 1);
  CHECK(next.class_of("tile2") == 2);
  CHECK_NOTHROW(next.validate(true));
  // The suggested lines read back as the same groups.
  const auto parsed =
      hgad::ModelConfig::from_text(hgad::to_config_line(groups[0]) + "\n", "suggestion");
  CHECK(parsed.class_groups == groups);
}

TEST_CASE("suggest_class_groups names the row, value or threshold it cannot use", "[model]") {
  const auto c = config_of({"a", "b"});
  using Catch::Contains;
  CHECK_THROWS_WITH(hgad::suggest_class_groups(c, {{1.0, 0.0}}),
                    Contains("a confusion of 1 rows for 2 classes"));
  CHECK_THROWS_WITH(hgad::suggest_class_groups(c, {{1.0, 0.0}, {1.0}}),
                    Contains("row 1 of the confusion has 1 entries, expected 2"));
  CHECK_THROWS_WITH(hgad::suggest_class_groups(c, {{1.0, 0.0}, {std::nan(""), 1.0}}),
                    Contains("in row 1 is outside [0, 1]"));
  CHECK_THROWS_WITH(hgad::suggest_class_groups(c, {{1.5, 0.0}, {0.0, 1.0}}),
                    Contains("confusion value 1.5 in row 0"));
  // Float rounding of a sure posterior (step 0 of init = whiten) is not an error.
  CHECK_NOTHROW(hgad::suggest_class_groups(c, {{1.0 + 1e-7, 0.0}, {0.0, 1.0}}));
  CHECK_THROWS_WITH(hgad::suggest_class_groups(c, {{1.0, 0.0}, {0.0, 1.0}}, 0.0),
                    Contains("threshold 0 is outside (0, 1]"));
}

}  // namespace class_groups_test
