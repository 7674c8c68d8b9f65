#include <catch2/catch.hpp>

#include <hgad/model/config.hpp>
#include <hgad/model/pipeline.hpp>

#include <algorithm>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace config_test {

namespace {

hgad::ModelConfig small_config() {
  hgad::ModelConfig c;
  c.levels = {{128, 32, 32}, {256, 16, 16}};
  c.class_names = {"kolektor", "magnetic_tile", "pcb1"};
  c.pos_dim = 128;
  c.n_blocks = 4;
  c.lr = 2e-4;
  c.seed = 12345678901234ull;
  c.calibration_images = 16;
  return c;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const hgad::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("ModelConfig defaults are HGAD's hyper-parameters", "[model]") {
  const hgad::ModelConfig c;
  CHECK(c.objective == hgad::Objective::hgad);
  CHECK(c.pos_dim == 256);
  CHECK(c.n_blocks == 12);
  CHECK(c.clamp == 1.9);
  CHECK(c.clamp_variant == hgad::SoftClamp::pinned);
  CHECK(c.n_centers == 10);
  CHECK(c.lambda1 == 1.0);
  CHECK(c.lambda2 == 100.0);
  CHECK(c.label_smoothing == 0.02);
  CHECK(c.meta_epochs == 25);
  CHECK(c.sub_epochs == 8);
  CHECK(c.warmup_meta_epochs == 2);
  CHECK(c.stage1_meta_epochs == 2);
  CHECK(c.lr == 2e-4);
  CHECK(c.beta1 == 0.95);
  CHECK(c.beta2 == 0.99);
  CHECK(c.weight_decay == 1e-4);
  CHECK(c.batch_size == 8);
  CHECK(c.position_fraction == std::vector<double>{1});
  CHECK(c.level_position_fraction(0) == 1);
  CHECK(c.level_position_fraction(3) == 1);  // one value: every level's
  CHECK(c.feature_noise == 0);
  CHECK(c.total_epochs() == 200);
  CHECK(c.calibration_baseline == hgad::CalibrationBaseline::none);
  CHECK(c.map_scale == hgad::MapScale::exp);
  CHECK(c.map_sigma == 4.0);
  CHECK(c.pixel_map_sigma == 0);
  CHECK(c.image_score_fraction == 0);
  CHECK(c.level_weights.empty());
  CHECK(c.calibration_count(700) == 700);  // calibration_images = 0: every image
  hgad::ModelConfig capped;
  capped.calibration_images = 64;
  CHECK(capped.calibration_count(700) == 64);
  CHECK(capped.calibration_count(40) == 40);
  CHECK_NOTHROW(c.validate(false));
  CHECK_THROWS_AS(c.validate(true), hgad::Error);
}

TEST_CASE("ModelConfig text form round-trips every field exactly", "[model]") {
  hgad::ModelConfig c = small_config();
  c.objective = hgad::Objective::nf;
  c.clamp = 1.0 / 3.0;
  c.clamp_variant = hgad::SoftClamp::head;
  c.label_smoothing = 0.1;
  c.lr_decay_rate = 0.3;
  c.calibration_baseline = hgad::CalibrationBaseline::position;
  c.map_scale = hgad::MapScale::log;
  c.map_sigma = 6.5;
  c.pixel_map_sigma = 2.25;
  c.position_fraction = {0.375, 0.125};
  c.feature_noise = 0.125;
  c.image_score_fraction = 0.01;
  c.level_weights = {0.25, 1.0 / 3.0};
  c.features.resize_mode = "shorter_side_crop";
  c.features.layers = {"layer3"};
  c.features.pyramid_levels = 2;
  c.features.neighbourhood = 3;
  c.features.image_size = 320;
  c.features.mask_size = 128;
  const std::string text = c.to_text();
  const hgad::ModelConfig back = hgad::ModelConfig::from_text(text, "roundtrip");
  CHECK(back.to_text() == text);
  CHECK(back.clamp == c.clamp);  // shortest exact representation, not rounded
  CHECK(back.position_fraction == std::vector<double>{0.375, 0.125});
  CHECK(back.level_position_fraction(1) == 0.125);
  CHECK_THROWS_AS(back.level_position_fraction(2), hgad::Error);  // one per level, and 2 levels
  CHECK(back.feature_noise == 0.125);
  CHECK(back.seed == c.seed);
  CHECK(back.levels == c.levels);
  CHECK(back.class_names == c.class_names);
  CHECK(back.features == c.features);
  CHECK(back.objective == hgad::Objective::nf);
  CHECK(back.calibration_baseline == hgad::CalibrationBaseline::position);
  CHECK(back.map_scale == hgad::MapScale::log);
  CHECK(back.map_sigma == 6.5);
  CHECK(back.pixel_map_sigma == 2.25);
  CHECK(back.image_score_fraction == 0.01);
  CHECK(back.level_weights == c.level_weights);
  CHECK(back.level_weights[1] == 1.0 / 3.0);  // exactly, as every double
  CHECK(back == c);
}

TEST_CASE("first_training_difference ignores the scoring settings and names any other change",
          "[model]") {
  const hgad::ModelConfig a = small_config();
  hgad::ModelConfig b = a;
  b.calibration_images = 3;
  b.calibration_baseline = hgad::CalibrationBaseline::position_std;
  b.map_scale = hgad::MapScale::log;
  b.level_weights = {1, 2};
  b.map_sigma = 6;
  b.pixel_map_sigma = 8;
  b.image_score_fraction = 0.01;
  b.threshold_quantile = 0.9;
  CHECK(hgad::first_training_difference(a, b).empty());
  CHECK(hgad::first_training_difference(a, a).empty());
  // Every scoring key is a key of the table.
  for (const char* key : hgad::scoring_config_keys)
    CHECK(std::string(hgad::detail::config_key_meaning(key)) != "");
  hgad::ModelConfig c = b;
  c.lr = 1e-3;
  CHECK(hgad::first_training_difference(a, c) == "lr");
  c = b;
  c.features.neighbourhood = 3;
  CHECK(hgad::first_training_difference(a, c) == "neighbourhood");
  c = b;
  c.class_groups = {{"pcb", {"pcb2", "pcb3"}}};
  CHECK(hgad::first_training_difference(a, c) == "group");
  c = b;
  c.levels[1].dim = 64;
  CHECK(hgad::first_training_difference(a, c) == "levels");
}

TEST_CASE("ModelConfig parser accepts comments, blank lines and partial files", "[model]") {
  const std::string text =
      "# a user file\n"
      "\n"
      "  n_blocks = 6   # fewer blocks\n"
      "levels = 64x8x8\r\n"
      "classes = a, b\n"
      "backbone = none\n";
  const hgad::ModelConfig c = hgad::ModelConfig::from_text(text, "user.cfg");
  CHECK(c.n_blocks == 6);
  REQUIRE(c.levels.size() == 1);
  CHECK(c.levels[0] == hgad::LevelSpec{64, 8, 8});
  CHECK(c.class_names == std::vector<std::string>{"a", "b"});
  CHECK(c.lr == 2e-4);  // untouched default
  CHECK_NOTHROW(c.validate());
}

TEST_CASE("ModelConfig parse errors name the source, the line, the key and the value", "[model]") {
  auto parse = [](const std::string& text) {
    return error_of([&] { hgad::ModelConfig::from_text(text, "x.cfg"); });
  };
  std::string e = parse("n_blocks = 4\nlr = abc\n");
  CHECK(e.find("x.cfg") != std::string::npos);
  CHECK(e.find("line 2") != std::string::npos);
  CHECK(e.find("'lr'") != std::string::npos);
  CHECK(e.find("'abc'") != std::string::npos);

  e = parse("colour = blue\n");
  CHECK(e.find("line 1") != std::string::npos);
  CHECK(e.find("unknown key 'colour'") != std::string::npos);

  e = parse("n_blocks = 4\nn_blocks = 5\n");
  CHECK(e.find("line 2") != std::string::npos);
  CHECK(e.find("twice") != std::string::npos);

  CHECK(parse("just words\n").find("expected 'key = value'") != std::string::npos);
  CHECK(parse("n_blocks = 4.5\n").find("'4.5' is not an integer") != std::string::npos);
  CHECK(parse("level_weights = 1, two\n").find("'1, two' is not a list of finite numbers") !=
        std::string::npos);
  CHECK(parse("level_weights = 1,\n").find("is not a list of finite numbers") != std::string::npos);
  CHECK(parse("lr = nan\n").find("'nan'") != std::string::npos);
  CHECK(parse("lr = 1e-3x\n").find("'1e-3x'") != std::string::npos);
  CHECK(parse("objective = cflow\n").find("hgad or nf") != std::string::npos);
  CHECK(parse("levels = 128x32\n").find("dim x height x width") != std::string::npos);
  CHECK(parse("seed = -1\n").find("non-negative") != std::string::npos);
  CHECK(parse("resize_mode = crop\n").find("stretch or shorter_side_crop") != std::string::npos);
  CHECK(parse("calibration_baseline = mean\n").find("none, position or position_std") !=
        std::string::npos);
  CHECK(parse("map_scale = linear\n").find("exp or log") != std::string::npos);
  CHECK(parse("map_sigma = inf\n").find("'inf'") != std::string::npos);
}

TEST_CASE("ModelConfig validation names the key and the offending value", "[model]") {
  auto validate = [](const std::function<void(hgad::ModelConfig&)>& edit) {
    hgad::ModelConfig c = small_config();
    edit(c);
    return error_of([&] { c.validate(); });
  };
  CHECK(validate([](hgad::ModelConfig&) {}).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.n_blocks = 0; }).find("n_blocks = 0") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.pos_dim = 6; }).find("pos_dim = 6") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.pos_dim = 0; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.lr = -1; }).find("lr = -1") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.label_smoothing = 1; }).find("label_smoothing = 1") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.beta2 = 1; }).find("beta2 = 1") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.batch_size = 0; }).find("batch_size = 0") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.position_fraction = {0};
        }).find("position_fraction = 0") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.position_fraction = {0.5, 1.5};
        }).find("position_fraction = 0.5, 1.5") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.position_fraction = {std::numeric_limits<double>::quiet_NaN()};
        }).find("position_fraction") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.position_fraction = {};
        }).find("position_fraction = : needs one value, or one per level (2)") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.position_fraction = {0.25, 0.5, 1};
        }).find("position_fraction = 0.25, 0.5, 1: needs one value, or one per level (2)") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.position_fraction = {0.25}; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.position_fraction = {0.125, 0.25}; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.feature_noise = -0.5; })
            .find("feature_noise = -0.5: must be in [0, 1000]") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.feature_noise = std::numeric_limits<double>::infinity();
        }).find("feature_noise") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.feature_noise = std::numeric_limits<double>::quiet_NaN();
        }).find("feature_noise") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.feature_noise = 0.3; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.levels[1].dim = 1; }).find("levels = 1x16x16") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.class_names[2] = "a,b"; }).find("classes = a,b") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.class_names[2] = "pcb1";
          c.class_names[1] = "pcb1";
        }).find("twice") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.levels.pop_back();
        }).find("feature settings give 2 levels") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.features.pyramid_levels = 3;
        }).find("exactly one layer") != std::string::npos);
  // A layer of the image at a smaller size: "<layer>@scale<digits>", not beside a pyramid.
  CHECK(validate([](hgad::ModelConfig& c) { c.features.layers = {"layer2", "layer3@scale1"}; })
            .empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.features.layers = {"layer2", "layer3@scale"}; })
            .find("layers = layer3@scale: a layer name must be plain, or plain@scale and one") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.features.layers = {"layer2", "layer3@1"}; })
            .find("layers = layer3@1") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.features.layers = {"layer3@scale1"};
          c.features.pyramid_levels = 2;
        }).find("cannot stand beside pyramid_levels") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.features.neighbourhood = 2;
        }).find("neighbourhood = 2: must be odd") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.features.neighbourhood = 5; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.map_sigma = 0; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.map_sigma = 1000; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.map_sigma = -1; })
            .find("map_sigma = -1: must be in [0, 1000]") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.map_sigma = 1001; })
            .find("map_sigma = 1001: must be in [0, 1000]") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.map_sigma = INFINITY; }).find("map_sigma = inf") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.pixel_map_sigma = 12; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.pixel_map_sigma = -0.5; })
            .find("pixel_map_sigma = -0.5: must be in [0, 1000]") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.pixel_map_sigma = NAN; })
            .find("pixel_map_sigma = nan") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.level_weights = {0, 2.5}; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.level_weights = {1, 2, 4}; })
            .find("level_weights = 1, 2, 4: needs as many weights as levels (2)") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.level_weights = {1, -1}; })
            .find("level_weights = 1, -1: each weight must be in [0, 1e+06]") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.level_weights = {1, NAN}; })
            .find("level_weights = 1, nan") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.level_weights = {0, 0}; })
            .find("at least one level must weigh more than 0") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.image_score_fraction = 1; }).empty());
  CHECK(validate([](hgad::ModelConfig& c) { c.image_score_fraction = 1.5; })
            .find("image_score_fraction = 1.5: must be in [0, 1]") != std::string::npos);
  // A blur wider than the map is allowed (the embeddings' maps are 1 pixel, σ the paper's 4).
  CHECK(validate([](hgad::ModelConfig& c) {
          c.features.mask_size = 1;
          c.map_sigma = 4;
        }).empty());
  CHECK(validate([](hgad::ModelConfig& c) {
          c.levels = {{2, 1, 1}};
          c.features.backbone = "none";
          c.features.neighbourhood = 3;
        }).find("backbone = none") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) { c.levels.clear(); }).find("levels") !=
        std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.levels = {{2, 1, 1}};
          c.features.backbone = "none";
          c.class_names = {"a", "b", "c", "d", "e"};
        }).find("K <= 2 D") != std::string::npos);
  CHECK(validate([](hgad::ModelConfig& c) {
          c.levels = {{2, 1, 1}};
          c.features.backbone = "none";
          c.class_names = {"a", "b", "c", "d", "e"};
          c.objective = hgad::Objective::nf;
        }).empty());
  CHECK(validate([](hgad::ModelConfig& c) {  // K = 2 D exactly
          c.levels = {{2, 1, 1}};
          c.features.backbone = "none";
          c.class_names = {"a", "b", "c", "d"};
        }).find("K <= 2 D") == std::string::npos);
  // A dimension whose double overflows (found by fuzz_config; UBSan flags 2 D).
  CHECK(validate([](hgad::ModelConfig& c) {
          c.levels = {{6499999999999999999, 1, 1}};
          c.features.backbone = "none";
          c.class_names = {"a", "b", "c"};
        }).find("K <= 2 D") == std::string::npos);
}

TEST_CASE("ModelConfig class groups: text form, folder lookup and training classes", "[model]") {
  hgad::ModelConfig c = small_config();
  c.class_groups = {{"pcb", {"pcb1", "pcb2", "pcb3"}}};
  c.set_classes_from_folders({"kolektor", "magnetic_tile", "pcb1", "pcb2", "pcb3"});
  CHECK(c.class_names == std::vector<std::string>{"kolektor", "magnetic_tile", "pcb"});
  CHECK_NOTHROW(c.validate());
  CHECK(c.class_of("kolektor") == 0);
  CHECK(c.class_of("pcb1") == 2);
  CHECK(c.class_of("pcb3") == 2);
  CHECK(c.class_of("pcb") == 2);
  CHECK(c.class_of("pcb4") == -1);
  CHECK(c.folder_names() ==
        std::vector<std::string>{"kolektor", "magnetic_tile", "pcb1", "pcb2", "pcb3"});

  // Classes take the order of their first folder.
  c.set_classes_from_folders({"pcb2", "kolektor", "pcb1", "pcb3", "magnetic_tile"});
  CHECK(c.class_names == std::vector<std::string>{"pcb", "kolektor", "magnetic_tile"});

  const std::string text = c.to_text();
  CHECK(text.find("group.pcb = pcb1, pcb2, pcb3\n") != std::string::npos);
  const hgad::ModelConfig back = hgad::ModelConfig::from_text(text, "roundtrip");
  CHECK(back.class_groups == c.class_groups);
  CHECK(back == c);

  const hgad::ModelConfig user =
      hgad::ModelConfig::from_text("group.boards = b1, b2\ngroup.tiles = t1\n", "user.cfg");
  REQUIRE(user.class_groups.size() == 2);
  CHECK(user.class_groups[0] == hgad::ClassGroup{"boards", {"b1", "b2"}});
  CHECK(user.class_groups[1] == hgad::ClassGroup{"tiles", {"t1"}});
  CHECK_NOTHROW(user.validate(false));

  // A group member that is not among the training folders is named.
  hgad::ModelConfig missing = user;
  const std::string e = error_of([&] { missing.set_classes_from_folders({"b1", "t1"}); });
  CHECK(e.find("group.boards = b2") != std::string::npos);
  CHECK(e.find("no class folder") != std::string::npos);

  // A folder that has a group's name would join the group unlisted.
  hgad::ModelConfig clash = user;
  CHECK(error_of([&] {
          clash.set_classes_from_folders({"b1", "b2", "t1", "boards"});
        }).find("group.boards: a class folder has the group's name") != std::string::npos);
}

TEST_CASE("ModelConfig class-group validation names the group and the folder", "[model]") {
  auto validate = [](const std::vector<hgad::ClassGroup>& groups,
                     std::vector<std::string> classes = {"a", "g", "h"}) {
    hgad::ModelConfig c = small_config();
    c.class_names = std::move(classes);
    c.class_groups = groups;
    return error_of([&] { c.validate(); });
  };
  CHECK(validate({{"g", {"x", "y"}}, {"h", {"z"}}}).empty());
  CHECK(validate({{"g", {}}}).find("group.g") != std::string::npos);
  CHECK(validate({{"g", {}}}).find("at least one class folder") != std::string::npos);
  CHECK(validate({{"q", {"x"}}}).find("not among the classes") != std::string::npos);
  CHECK(validate({{"g", {"x"}}, {"g", {"y"}}}).find("defined twice") != std::string::npos);
  CHECK(validate({{"g", {"x,y"}}}).find("group.g = x,y") != std::string::npos);
  CHECK(validate({{"g", {"a"}}}).find("group.g = a: the folder is a class of its own") !=
        std::string::npos);
  CHECK(validate({{"g", {"x", "x"}}}).find("listed twice") != std::string::npos);
  CHECK(validate({{"g", {"x"}}, {"h", {"x"}}}).find("group.h = x") != std::string::npos);
  CHECK(validate({{"g", {"x"}}, {"h", {"x"}}}).find("also in group.g") != std::string::npos);
  CHECK(validate({{"g", {"h"}}, {"h", {"y"}}}).find("group.g = h") != std::string::npos);
  CHECK(validate({{"", {"x"}}}).find("group name") != std::string::npos);
  CHECK(error_of([] {
          hgad::ModelConfig::from_text("group.g = x\ngroup.g = y\n", "x.cfg");
        }).find("key 'group.g' is set twice") != std::string::npos);
}

TEST_CASE("ModelConfig key table: to_text writes each key once in table order, from_text reads it",
          "[model]") {
  hgad::ModelConfig c = small_config();
  c.class_groups = {{"pcb", {"pcb1", "pcb2"}}};
  std::vector<std::string> table;
  hgad::detail::for_each_config_key(c, [&](const char* name, const auto&, const auto&...) {
    table.push_back(name == std::string("group.") ? "group.pcb" : name);
  });
  // The keys and their order are part of every saved model file.
  const std::vector<std::string> keys = {
      "objective", "levels", "classes", "group.pcb", "init", "intra_center_init",
      "class_covariance", "whiten_mean", "pos_dim", "n_blocks", "clamp", "clamp_variant",
      "n_centers", "lambda1", "lambda2", "label_smoothing", "meta_epochs", "sub_epochs",
      "warmup_meta_epochs", "stage1_meta_epochs", "lr", "lr_decay_rate", "beta1", "beta2",
      "adam_eps", "weight_decay", "batch_size", "position_fraction", "feature_noise", "seed",
      "calibration_images", "calibration_baseline", "map_scale", "level_weights", "map_sigma",
      "pixel_map_sigma", "image_score_fraction", "threshold_quantile", "backbone", "layers",
      "pyramid_levels", "neighbourhood", "image_size", "resize_mode", "mask_size"};
  CHECK(table == keys);

  auto lines_of = [](const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
      if (line.rfind('#', 0) != 0) lines.push_back(line);
    return lines;
  };
  const std::vector<std::string> lines = lines_of(c.to_text());
  std::vector<std::string> written;
  for (const std::string& line : lines) written.push_back(line.substr(0, line.find(" =")));
  CHECK(written == keys);

  // Each line read alone over the defaults sets its key and no other.
  const std::vector<std::string> defaults = lines_of(hgad::ModelConfig{}.to_text());
  for (const std::string& line : lines) {
    const std::vector<std::string> read =
        lines_of(hgad::ModelConfig::from_text(line + "\n", "one line").to_text());
    CHECK(std::find(read.begin(), read.end(), line) != read.end());
    for (const std::string& other : read)
      if (other != line) CHECK(std::find(defaults.begin(), defaults.end(), other) != defaults.end());
  }
}

TEST_CASE("ModelConfig key meanings name exactly the key table's keys, in its order", "[model]") {
  hgad::ModelConfig c;
  std::vector<std::string> table, described;
  hgad::detail::for_each_config_key(
      c, [&](const char* name, const auto&, const auto&...) { table.push_back(name); });
  for (const auto& k : hgad::detail::config_key_meanings) {
    described.push_back(k.name);
    CHECK(std::string(k.meaning).size() > 5);
  }
  CHECK(described == table);
}

TEST_CASE("ModelConfig threshold_quantile defaults to 0.99 and must be above 0 and at most 1",
          "[model]") {
  CHECK(hgad::ModelConfig{}.threshold_quantile == 0.99);
  for (const char* bad : {"0", "-0.5", "1.5"}) {
    const hgad::ModelConfig c =
        hgad::ModelConfig::from_text(std::string("threshold_quantile = ") + bad, "t.cfg");
    CHECK_THROWS_WITH(c.validate(false), Catch::Contains("threshold_quantile") &&
                                             Catch::Contains(bad) && Catch::Contains("(0, 1]"));
  }
  CHECK_NOTHROW(hgad::ModelConfig::from_text("threshold_quantile = 1", "t.cfg").validate(false));
}

TEST_CASE("backbone_config_for reads each layer's stage and scale, and refuses a level given twice",
          "[model]") {
  hgad::FeatureSettings f;
  f.layers = {"layer1", "layer2", "layer3"};
  hgad::FeatureConfig c = hgad::backbone_config_for(f);
  CHECK(c.stages ==
        std::vector<hgad::ResNetStage>{hgad::ResNetStage::layer1, hgad::ResNetStage::layer2,
                                       hgad::ResNetStage::layer3});
  CHECK(c.scales.empty());  // one image: the network's extractor as it is
  f.layers.push_back("layer3@scale1");
  c = hgad::backbone_config_for(f);
  CHECK(c.stages.size() == 4);
  CHECK(c.stages[3] == hgad::ResNetStage::layer3);
  CHECK(c.scales == std::vector<int>{0, 0, 0, 1});
  CHECK(c.n_scales == 1);
  f.layers = {"layer3", "layer3@scale0"};
  CHECK(error_of([&] { hgad::backbone_config_for(f); })
            .find("'layer3' and 'layer3@scale0' are the same level") != std::string::npos);
  f.layers = {"layer3", "layer3@scale2", "layer3@scale2"};
  CHECK(error_of([&] { hgad::backbone_config_for(f); }).find("same level") != std::string::npos);
  f.layers = {"layer3@scale1"};
  f.pyramid_levels = 2;
  CHECK(error_of([&] { hgad::backbone_config_for(f); })
            .find("cannot stand beside pyramid_levels = 2") != std::string::npos);
}

}  // namespace config_test
