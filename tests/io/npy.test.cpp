#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <hgad/io/npy.hpp>
#include <string>
#include <vector>

#include "io/temp_dir.hpp"

namespace npy_test {

using Bytes = std::vector<std::uint8_t>;

namespace {

// A .npy file assembled byte by byte: magic, version, little-endian header length, header text,
// data.
Bytes make_npy(int major, const std::string& header, const Bytes& data, int minor = 0) {
  Bytes out = {0x93,
               'N',
               'U',
               'M',
               'P',
               'Y',
               static_cast<std::uint8_t>(major),
               static_cast<std::uint8_t>(minor)};
  const std::size_t n = header.size();
  out.push_back(static_cast<std::uint8_t>(n & 0xff));
  out.push_back(static_cast<std::uint8_t>((n >> 8) & 0xff));
  if (major != 1) {
    out.push_back(static_cast<std::uint8_t>((n >> 16) & 0xff));
    out.push_back(static_cast<std::uint8_t>((n >> 24) & 0xff));
  }
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// IEEE-754 bit patterns written out little-endian by hand.
void put_u32(Bytes& out, std::uint32_t bits) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(bits >> (8 * i)));
}
void put_u64(Bytes& out, std::uint64_t bits) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(bits >> (8 * i)));
}

// 1.0f, -2.0f, 0.5f, 3.0f, 0.0f, 100.0f
const std::vector<std::uint32_t> f4_bits = {0x3f800000u, 0xc0000000u, 0x3f000000u,
                                            0x40400000u, 0x00000000u, 0x42c80000u};
const std::vector<double> f4_values = {1.0, -2.0, 0.5, 3.0, 0.0, 100.0};
// 1.0, -0.25, 1e10 (0x4202a05f20000000), 7.0, -3.5, 2.0
const std::vector<std::uint64_t> f8_bits = {0x3ff0000000000000ull, 0xbfd0000000000000ull,
                                            0x4202a05f20000000ull, 0x401c000000000000ull,
                                            0xc00c000000000000ull, 0x4000000000000000ull};
const std::vector<double> f8_values = {1.0, -0.25, 1e10, 7.0, -3.5, 2.0};

Bytes f4_data() {
  Bytes d;
  for (auto b : f4_bits) put_u32(d, b);
  return d;
}
Bytes f8_data() {
  Bytes d;
  for (auto b : f8_bits) put_u64(d, b);
  return d;
}

// A header padded with spaces and a newline so that the data starts at a multiple of 64 bytes.
std::string padded(std::string dict, int major) {
  const std::size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + dict.size() + 1) % 64 != 0) dict += ' ';
  return dict + "\n";
}

template <class Scalar>
void require_values(const hgad::Tensor<Scalar>& t, const std::vector<double>& expected) {
  REQUIRE(t.numel() == static_cast<hgad::Index>(expected.size()));
  const auto v = t.to_vector();
  for (std::size_t i = 0; i < expected.size(); ++i) {
    REQUIRE(std::isfinite(v[i]));
    REQUIRE(static_cast<double>(v[i]) == Approx(expected[i]).epsilon(1e-7));
  }
}

std::string error_of(const Bytes& bytes, const std::string& name = "mem.npy") {
  try {
    (void)hgad::decode_npy<float>(bytes.data(), bytes.size(), name);
  } catch (const hgad::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEMPLATE_TEST_CASE("load_npy reads '<f4' and '<f8' files of format versions 1.0, 2.0 and 3.0",
                   "[io]", float, double) {
  hgad_test::TempDir dir("npy_versions");
  for (int major : {1, 2, 3}) {
    for (bool f8 : {false, true}) {
      CAPTURE(major, f8);
      const std::string descr = f8 ? "<f8" : "<f4";
      const Bytes bytes = make_npy(
          major,
          padded("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (2, 3), }", major),
          f8 ? f8_data() : f4_data());
      const std::string path = dir.file("v" + std::to_string(major) + descr.substr(1) + ".npy");
      hgad_test::write_bytes(path, bytes);

      const auto t = hgad::load_npy<TestType>(path);
      REQUIRE(t.shape() == hgad::Shape({2, 3}));
      require_values(t, f8 ? f8_values : f4_values);
      REQUIRE(t(1, 2) == TestType(f8 ? 2.0 : 100.0));

      const hgad::NpyHeader header = hgad::read_npy_header(path);
      REQUIRE(header.major_version == major);
      REQUIRE(header.minor_version == 0);
      REQUIRE(header.dtype == (f8 ? hgad::NpyDtype::float64 : hgad::NpyDtype::float32));
      REQUIRE(header.shape == std::vector<hgad::Index>{2, 3});
      REQUIRE(header.data_offset % 64 == 0);
      REQUIRE(header.data_offset + header.data_bytes() == bytes.size());
    }
  }
}

TEST_CASE("parse_npy accepts the header spellings numpy and Python 2 produced", "[io]") {
  const Bytes six = f4_data();
  // Keys in another order, double quotes, no trailing comma, no padding, Python 2 long suffix,
  // tabs.
  for (const std::string& header : {
           std::string("{'shape': (6,), 'fortran_order': False, 'descr': '<f4'}"),
           std::string("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (6,)}\n"),
           std::string("{'descr':'<f4','fortran_order':False,'shape':(6L,),}"),
           std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }   \n"),
           std::string("\t{ 'descr' : '<f4' , 'fortran_order' : False , 'shape' : ( 6 , ) }  "),
           std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (6), }"),
           std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 6, 1, 1), }\n"),
       }) {
    CAPTURE(header);
    const Bytes bytes = make_npy(1, header, six);
    const hgad::NpyHeader parsed = hgad::parse_npy(bytes.data(), bytes.size(), "mem.npy");
    REQUIRE(parsed.numel() == 6);
    require_values(hgad::decode_npy<double>(bytes.data(), bytes.size(), "mem.npy"), f4_values);
  }
}

TEST_CASE("parse_npy handles 0-d and empty arrays", "[io]") {
  Bytes one;
  put_u32(one, 0x40400000u);  // 3.0f
  const Bytes scalar =
      make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n", one);
  const auto s = hgad::decode_npy<float>(scalar.data(), scalar.size(), "scalar.npy");
  REQUIRE(s.rank() == 0);
  REQUIRE(s.item() == 3.0f);

  const Bytes empty =
      make_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 5), }\n", {});
  const auto e = hgad::decode_npy<float>(empty.data(), empty.size(), "empty.npy");
  REQUIRE(e.shape() == hgad::Shape({0, 5}));
  REQUIRE(e.numel() == 0);
}

TEST_CASE("load_npy_int64 reads '<i8' label files", "[io]") {
  hgad_test::TempDir dir("npy_i8");
  Bytes data;
  const std::vector<std::int64_t> labels = {0, 1, 4, -1, 9000000000LL};
  for (auto v : labels) put_u64(data, static_cast<std::uint64_t>(v));
  for (int major : {1, 2, 3}) {
    const std::string path = dir.file("labels" + std::to_string(major) + ".npy");
    hgad_test::write_bytes(
        path,
        make_npy(major, padded("{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }", major),
                 data));
    std::vector<hgad::Index> shape;
    REQUIRE(hgad::load_npy_int64(path, &shape) == labels);
    REQUIRE(shape == std::vector<hgad::Index>{5});
    REQUIRE_THROWS_WITH(hgad::load_npy<float>(path),
                        Catch::Contains("load_npy_int64") && Catch::Contains(path));
  }
  const Bytes floats =
      make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", f4_data());
  REQUIRE_THROWS_WITH(hgad::decode_npy_int64(floats.data(), floats.size(), "f.npy"),
                      Catch::Contains("'<f4'") && Catch::Contains("f.npy"));
}

TEST_CASE("Corrupted .npy files raise errors that name the file and the problem", "[io]") {
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
  const Bytes valid = make_npy(1, ok, f4_data());
  REQUIRE(error_of(valid).empty());

  struct Case {
    const char* what;
    Bytes bytes;
    const char* message;
  };
  Bytes bad_magic = valid;
  bad_magic[1] = 'n';
  Bytes truncated_data = valid;
  truncated_data.resize(truncated_data.size() - 1);
  Bytes trailing = valid;
  trailing.push_back(0);
  Bytes truncated_header(valid.begin(), valid.begin() + 40);
  const std::vector<Case> cases = {
      {"empty file", {}, "too short"},
      {"short prefix", Bytes(valid.begin(), valid.begin() + 7), "too short"},
      {"v2 short prefix", Bytes{0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 10, 0}, "too short"},
      {"bad magic", bad_magic, "bad magic"},
      {"png file", Bytes{0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0}, "bad magic"},
      {"version 4", make_npy(4, ok, f4_data()), "version 4.0"},
      {"version 1.1", make_npy(1, ok, f4_data(), 1), "version 1.1"},
      {"truncated header", truncated_header, "truncated header"},
      {"truncated data", truncated_data, "truncated data"},
      {"trailing bytes", trailing, "trailing"},
      {"shape larger than data",
       make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }", f4_data()),
       "truncated data"},
      {"shape smaller than data",
       make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", f4_data()),
       "trailing"},
      {"fortran order",
       make_npy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", f4_data()),
       "Fortran"},
      {"int32", make_npy(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (6,), }", f4_data()),
       "unsupported dtype '<i4'"},
      {"float16",
       make_npy(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (12,), }", f4_data()),
       "unsupported dtype '<f2'"},
      {"big endian",
       make_npy(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }", f4_data()),
       "big-endian"},
      {"structured",
       make_npy(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", f4_data()),
       "quoted string"},
      {"missing shape", make_npy(1, "{'descr': '<f4', 'fortran_order': False, }", f4_data()),
       "no 'shape'"},
      {"missing descr", make_npy(1, "{'fortran_order': False, 'shape': (6,), }", f4_data()),
       "no 'descr'"},
      {"duplicate key",
       make_npy(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (6,), }",
                f4_data()),
       "twice"},
      {"unknown key",
       make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1}", f4_data()),
       "unexpected key 'x'"},
      {"negative dimension",
       make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-6,), }", f4_data()),
       "non-negative integer"},
      {"huge dimension",
       make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
                f4_data()),
       "exceeds"},
      {"overflowing product",
       make_npy(1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (281474976710656, "
                "281474976710656), }",
                f4_data()),
       "2^56"},
      {"not a dict", make_npy(1, "['descr', '<f4']", f4_data()), "expected '{'"},
      {"unterminated", make_npy(1, "{'descr': '<f4", f4_data()), "unterminated"},
      {"text after dict",
       make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,)} x", f4_data()),
       "after the header"},
      {"bad bool", make_npy(1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (6,)}", f4_data()),
       "True or False"},
      {"rank 5",
       make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 2, 3, 1), }",
                f4_data()),
       "rank 5"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::string message = error_of(c.bytes, "corrupt.npy");
    CAPTURE(message);
    REQUIRE(message.find("corrupt.npy") != std::string::npos);
    REQUIRE(message.find(c.message) != std::string::npos);
  }
}

TEST_CASE("load_npy names the path of a missing file", "[io]") {
  REQUIRE_THROWS_WITH(hgad::load_npy<float>("/nonexistent/dir/w.npy"),
                      Catch::Contains("/nonexistent/dir/w.npy"));
  REQUIRE_THROWS_AS(hgad::read_npy_header("/nonexistent/dir/w.npy"), hgad::Error);
}

TEST_CASE(
    "Every prefix and every single-byte corruption of a .npy file is rejected or parsed, never a "
    "crash",
    "[io]") {
  const Bytes valid = make_npy(
      2, padded("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }", 2), f8_data());
  for (std::size_t n = 0; n < valid.size(); ++n) {
    const Bytes prefix(valid.begin(), valid.begin() + static_cast<std::ptrdiff_t>(n));
    REQUIRE_THROWS_AS(hgad::decode_npy<double>(prefix.data(), prefix.size(), "prefix.npy"),
                      hgad::Error);
  }
  const std::uint8_t replacements[] = {0x00, 0xff, '(', ')', ',', '\'', '9', 'L', '{', '}'};
  const std::size_t header_end = 12 + 52;
  for (std::size_t i = 0; i < header_end; ++i) {
    for (std::uint8_t r : replacements) {
      Bytes corrupt = valid;
      corrupt[i] = r;
      try {
        const auto t = hgad::decode_npy<double>(corrupt.data(), corrupt.size(), "flip.npy");
        REQUIRE(t.numel() * 8 <= static_cast<hgad::Index>(corrupt.size()));
      } catch (const hgad::Error&) {
      }
    }
  }
}

TEMPLATE_TEST_CASE("save_npy writes version 1.0 files that load_npy reads back exactly", "[io]",
                   float, double) {
  hgad_test::TempDir dir("npy_roundtrip");
  hgad::Rng rng(7);
  for (const hgad::Shape& shape : {hgad::Shape{}, hgad::Shape{0}, hgad::Shape{5}, hgad::Shape{3, 4},
                                   hgad::Shape{2, 3, 4}, hgad::Shape{2, 1, 3, 5}}) {
    CAPTURE(shape.to_string());
    const auto t = hgad::Tensor<TestType>::randn(shape, rng);
    const std::string path = dir.file("t.npy");
    hgad::save_npy(path, t);
    const Bytes bytes = hgad_test::read_bytes(path);
    REQUIRE(bytes.size() >= 10);
    REQUIRE(std::memcmp(bytes.data(), "\x93NUMPY\x01\x00", 8) == 0);
    const std::size_t header_length = bytes[8] | (bytes[9] << 8);
    REQUIRE((10 + header_length) % 64 == 0);
    REQUIRE(bytes[10 + header_length - 1] == '\n');
    const std::string header(bytes.begin() + 10,
                             bytes.begin() + 10 + static_cast<std::ptrdiff_t>(header_length));
    REQUIRE(header.find(std::is_same_v<TestType, float> ? "'<f4'" : "'<f8'") != std::string::npos);

    const auto back = hgad::load_npy<TestType>(path);
    REQUIRE(back.shape() == shape);
    REQUIRE(back.to_vector() == t.to_vector());
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    REQUIRE(entry.path().filename() == "t.npy");
}

TEST_CASE("save_npy_int64 round-trips labels with a shape", "[io]") {
  hgad_test::TempDir dir("npy_i8_roundtrip");
  const std::vector<std::int64_t> values = {3, -1, 0, 7, 1LL << 40, 2};
  hgad::save_npy_int64(dir.file("l.npy"), values, {2, 3});
  std::vector<hgad::Index> shape;
  REQUIRE(hgad::load_npy_int64(dir.file("l.npy"), &shape) == values);
  REQUIRE(shape == std::vector<hgad::Index>{2, 3});
  REQUIRE_THROWS_AS(hgad::save_npy_int64(dir.file("bad.npy"), values, {4}), hgad::Error);
  REQUIRE_FALSE(std::filesystem::exists(dir.file("bad.npy")));
}

TEST_CASE("save_npy to an unwritable path throws and leaves no file", "[io]") {
  REQUIRE_THROWS_WITH(hgad::save_npy("/nonexistent/dir/out.npy", hgad::Tensor<float>::ones({2})),
                      Catch::Contains("/nonexistent/dir/out.npy"));
}

TEST_CASE("The shared ResNet-18 weights and golden input parse as documented", "[io]") {
  const std::string dir = std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet";
  if (!std::filesystem::exists(dir + "/conv1.weight.npy")) {
    WARN("skipped: " << dir << " is absent");
    return;
  }
  const auto w = hgad::load_npy<float>(dir + "/conv1.weight.npy");
  REQUIRE(w.shape() == hgad::Shape({64, 3, 7, 7}));
  const auto header = hgad::read_npy_header(dir + "/golden/cat_crop224_input_chw.npy");
  REQUIRE(header.major_version == 1);
  REQUIRE(header.data_offset == 128);
  REQUIRE(header.shape == std::vector<hgad::Index>{3, 224, 224});
  const auto x = hgad::load_npy<double>(dir + "/golden/cat_crop224_input_chw.npy");
  for (double v : x.to_vector()) REQUIRE(std::isfinite(v));
}

}  // namespace npy_test
