#include <catch2/catch.hpp>

#include <hgad/io/checkpoint.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace checkpoint_test {

namespace {

std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("hgad_ckpt_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::vector<std::uint8_t> read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::filesystem::path& p, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

hgad::Checkpoint sample_checkpoint() {
  hgad::Rng rng(5);
  hgad::Checkpoint c;
  c.set_text("config", "n_classes = 3\n");
  c.set_tensor("mu", hgad::Tensor<float>::randn({3, 7}, rng));
  c.set_tensor("delta", hgad::Tensor<double>::randn({3, 2, 7}, rng));
  c.set_int64("labels", {0, 2, 1, 1});
  return c;
}

}  // namespace

TEST_CASE("CRC32 matches the IEEE 802.3 check value", "[io]") {
  const std::string s = "123456789";
  REQUIRE(hgad::detail::crc32(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()) == 0xCBF43926u);
}

TEST_CASE("Checkpoint round trip keeps every entry bit for bit", "[io]") {
  const auto dir = scratch_dir("roundtrip");
  const auto original = sample_checkpoint();
  original.save((dir / "m.hgad").string());
  const auto loaded = hgad::Checkpoint::load((dir / "m.hgad").string());
  REQUIRE(loaded.text("config") == "n_classes = 3\n");
  REQUIRE(loaded.tensor<float>("mu").to_vector() == original.tensor<float>("mu").to_vector());
  REQUIRE(loaded.tensor<double>("delta").to_vector() == original.tensor<double>("delta").to_vector());
  REQUIRE(loaded.tensor<double>("delta").shape() == hgad::Shape{3, 2, 7});
  REQUIRE(loaded.int64("labels") == std::vector<std::int64_t>{0, 2, 1, 1});
  REQUIRE(loaded.serialize() == original.serialize());
  std::filesystem::remove_all(dir);
}

TEST_CASE("Checkpoint erase removes one entry and leaves the others", "[io]") {
  auto c = sample_checkpoint();
  REQUIRE(c.erase("mu"));
  CHECK_FALSE(c.has("mu"));
  CHECK_FALSE(c.erase("mu"));
  CHECK(c.names() == std::vector<std::string>{"config", "delta", "labels"});
}

TEST_CASE("Checkpoint loading says which check failed", "[io]") {
  const auto dir = scratch_dir("errors");
  const auto good = sample_checkpoint().serialize();
  const auto path = dir / "bad.hgad";

  SECTION("missing file") {
    REQUIRE_THROWS_WITH(hgad::Checkpoint::load((dir / "absent.hgad").string()), Catch::Contains("cannot open"));
  }
  SECTION("wrong magic") {
    auto bytes = good;
    bytes[0] = 'X';
    write_bytes(path, bytes);
    REQUIRE_THROWS_WITH(hgad::Checkpoint::load(path.string()), Catch::Contains("wrong magic"));
  }
  SECTION("future version") {
    auto bytes = good;
    bytes[8] = 9;
    write_bytes(path, bytes);
    REQUIRE_THROWS_WITH(hgad::Checkpoint::load(path.string()), Catch::Contains("format version 9"));
  }
  SECTION("truncated") {
    auto bytes = good;
    bytes.resize(bytes.size() - 5);
    write_bytes(path, bytes);
    REQUIRE_THROWS_WITH(hgad::Checkpoint::load(path.string()), Catch::Contains("truncated"));
    bytes.resize(10);
    write_bytes(path, bytes);
    REQUIRE_THROWS_WITH(hgad::Checkpoint::load(path.string()), Catch::Contains("truncated"));
  }
  SECTION("corrupted payload") {
    auto bytes = good;
    bytes[bytes.size() - 3] ^= 0x40;
    write_bytes(path, bytes);
    REQUIRE_THROWS_WITH(hgad::Checkpoint::load(path.string()), Catch::Contains("CRC32"));
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("Checkpoint parsing survives every truncation and single-byte corruption", "[io]") {
  const auto good = sample_checkpoint().serialize();
  for (std::size_t n = 0; n < good.size(); n += 7) {
    REQUIRE_THROWS_AS(hgad::Checkpoint::parse(good.data(), n, "t"), hgad::Error);
  }
  for (std::size_t i = 0; i < good.size(); i += 5) {
    auto bytes = good;
    bytes[i] ^= 0x01;
    REQUIRE_THROWS_AS(hgad::Checkpoint::parse(bytes.data(), bytes.size(), "c"), hgad::Error);
  }
}

TEST_CASE("A failed checkpoint write keeps the existing file intact", "[io]") {
  const auto dir = scratch_dir("atomic");
  const auto path = dir / "model.hgad";
  hgad::Checkpoint first;
  first.set_text("config", "first");
  first.save(path.string());
  const auto before = read_bytes(path);
  // Occupy the temporary name with a directory so the write fails before anything is renamed.
  std::filesystem::create_directory(path.string() + ".tmp." + std::to_string(::getpid()));
  REQUIRE_THROWS_WITH(sample_checkpoint().save(path.string()), Catch::Contains("model.hgad"));
  REQUIRE(read_bytes(path) == before);
  REQUIRE(hgad::Checkpoint::load(path.string()).text("config") == "first");
  std::filesystem::remove_all(dir);
}

}  // namespace checkpoint_test
