#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <hgad/io/image.hpp>
#include <hgad/io/npy.hpp>
#include <string>
#include <vector>

#include "io/temp_dir.hpp"

namespace image_test {

using Bytes = std::vector<std::uint8_t>;

namespace {

template <class Scalar>
void require_close(const hgad::Tensor<Scalar>& t, const std::vector<double>& expected,
                   double tol = 1e-6) {
  REQUIRE(t.numel() == static_cast<hgad::Index>(expected.size()));
  const auto v = t.to_vector();
  for (std::size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(i, v[i], expected[i]);
    REQUIRE(std::isfinite(v[i]));
    REQUIRE(std::abs(double(v[i]) - expected[i]) <= tol);
  }
}

// Pixels of a small test image with `channels` interleaved channels: distinct, non-trivial values.
std::vector<std::uint8_t> test_pixels(int width, int height, int channels) {
  std::vector<std::uint8_t> p(static_cast<std::size_t>(width * height * channels));
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < channels; ++c)
        p[static_cast<std::size_t>((y * width + x) * channels + c)] =
            static_cast<std::uint8_t>((37 * x + 91 * y + 53 * c + 11 * x * y) % 256);
  return p;
}

Bytes encode(const char* format, int width, int height, int channels,
             const std::vector<std::uint8_t>& pixels) {
  Bytes out;
  int ok = 0;
  const std::string f = format;
  if (f == "png")
    ok = stbi_write_png_to_func(hgad::detail::image::append_bytes, &out, width, height, channels,
                                pixels.data(), width * channels);
  if (f == "bmp")
    ok = stbi_write_bmp_to_func(hgad::detail::image::append_bytes, &out, width, height, channels,
                                pixels.data());
  if (f == "jpg")
    ok = stbi_write_jpg_to_func(hgad::detail::image::append_bytes, &out, width, height, channels,
                                pixels.data(), 100);
  REQUIRE(ok != 0);
  return out;
}

// The expected RGB value of stored pixel (x, y) channel k after "gray replicated, alpha dropped".
int expected_rgb(const std::vector<std::uint8_t>& p, int width, int channels, int x, int y, int k) {
  const int base = (y * width + x) * channels;
  if (channels <= 2) return p[static_cast<std::size_t>(base)];
  return p[static_cast<std::size_t>(base + k)];
}

// stb_image_write's JPEG encoder left-shifts negative ints, which UBSan reports, so sanitized
// builds make no JPEGs here; JPEG decoding stays covered under the sanitizers by the
// industrial-mini test (its JPEG classes) and by tests/fuzz/fuzz_image.cpp.
#ifdef HGAD_SANITIZED
const std::vector<const char*> formats = {"png", "bmp"};
#else
const std::vector<const char*> formats = {"png", "bmp", "jpg"};
#endif

}  // namespace

TEMPLATE_TEST_CASE(
    "resize_bilinear 2x2 -> 4x4 matches hand-computed values in both align_corners modes", "[io]",
    float, double) {
  const auto x = hgad::Tensor<TestType>::from_vector({1, 2, 2}, {0, 1, 2, 3});
  // f(y, x) = 2y + x is linear, so the output is 2 s_y + s_x at the source coordinates s.
  // align_corners=True: s = o (2 - 1) / (4 - 1) = 0, 1/3, 2/3, 1.
  std::vector<double> expected_true;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) expected_true.push_back(2.0 * i / 3.0 + j / 3.0);
  const auto up_true = hgad::resize_bilinear(x, 4, 4, true);
  REQUIRE(up_true.shape() == hgad::Shape({1, 4, 4}));
  require_close(up_true, expected_true);
  // align_corners=False: s = (o + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (reads
  // index 1 only).
  require_close(hgad::resize_bilinear(x, 4, 4, false), {0.0, 0.25, 0.75, 1.0,  //
                                                        0.5, 0.75, 1.25, 1.5,  //
                                                        1.5, 1.75, 2.25, 2.5,  //
                                                        2.0, 2.25, 2.75, 3.0});
}

TEMPLATE_TEST_CASE("resize_bilinear interpolates a non-linear image and downsamples as PyTorch",
                   "[io]", float, double) {
  // [[1, 2], [3, 5]] -> 3x3 with align_corners: edge midpoints are pair means, the centre the mean
  // of four.
  const auto x = hgad::Tensor<TestType>::from_vector({2, 2}, {1, 2, 3, 5});
  require_close(hgad::resize_bilinear(x, 3, 3, true), {1, 1.5, 2, 2, 2.75, 3.5, 3, 4, 5});
  // 1x4 -> 1x2: align_corners=False reads s = 0.5 and 2.5 (pair means); True reads s = 0 and 3.
  const auto row = hgad::Tensor<TestType>::from_vector({1, 4}, {0, 1, 2, 3});
  require_close(hgad::resize_bilinear(row, 1, 2, false), {0.5, 2.5});
  require_close(hgad::resize_bilinear(row, 1, 2, true), {0.0, 3.0});
  // A single output pixel with align_corners reads the top-left corner.
  require_close(hgad::resize_bilinear(x, 1, 1, true), {1});
  // Same size is the identity in both modes; a batch (N, C, H, W) resizes every plane alike.
  hgad::Rng rng(3);
  const auto batch = hgad::Tensor<TestType>::randn({2, 3, 5, 7}, rng);
  for (bool ac : {false, true})
    REQUIRE(hgad::resize_bilinear(batch, 5, 7, ac).to_vector() == batch.to_vector());
  const auto small = hgad::resize_bilinear(batch, 3, 4, true);
  REQUIRE(small.shape() == hgad::Shape({2, 3, 3, 4}));
  REQUIRE(small(1, 2, 0, 0) == batch(1, 2, 0, 0));
  REQUIRE(small(1, 2, 2, 3) == batch(1, 2, 4, 6));
  REQUIRE_THROWS_AS(hgad::resize_bilinear(x, 0, 3, true), hgad::Error);
  REQUIRE_THROWS_AS(hgad::resize_bilinear(hgad::Tensor<TestType>({3}), 2, 2, true), hgad::Error);
}

TEMPLATE_TEST_CASE("resize_bilinear_antialias follows Pillow's triangle filter", "[io]", float,
                   double) {
  // 1x4 -> 1x2: scale 2, support 2, centres 1 and 3. Taps {0,1,2} weigh tri(-0.25, 0.25, 0.75) /
  // 1.75 = 3/7, 3/7, 1/7; taps {1,2,3} weigh 1/7, 3/7, 3/7.
  const auto row = hgad::Tensor<TestType>::from_vector({1, 4}, {0, 1, 2, 3});
  require_close(hgad::resize_bilinear_antialias(row, 1, 2), {5.0 / 7.0, 16.0 / 7.0});
  // Upscaling 1x2 -> 1x4: half-pixel bilinear with edge weights renormalised: 0, 0.25, 0.75, 1.
  const auto pair = hgad::Tensor<TestType>::from_vector({1, 2}, {0, 1});
  require_close(hgad::resize_bilinear_antialias(pair, 1, 4), {0, 0.25, 0.75, 1});
  // Separable: a 4x4 outer product u v^T maps to (A u)(A v)^T.
  const std::vector<double> u = {0, 1, 2, 3}, v = {1, -1, 4, 2};
  std::vector<TestType> outer;
  for (double a : u)
    for (double b : v) outer.push_back(TestType(a * b));
  const auto img = hgad::Tensor<TestType>::from_vector({4, 4}, outer);
  const double au[2] = {5.0 / 7.0, 16.0 / 7.0};
  const double av[2] = {(3 * 1 + 3 * -1 + 1 * 4) / 7.0, (1 * -1 + 3 * 4 + 3 * 2) / 7.0};
  require_close(hgad::resize_bilinear_antialias(img, 2, 2),
                {au[0] * av[0], au[0] * av[1], au[1] * av[0], au[1] * av[1]}, 1e-5);
  // Constant images stay constant at any size.
  const auto flat = hgad::Tensor<TestType>::full({3, 17, 9}, TestType(0.25));
  for (TestType value : hgad::resize_bilinear_antialias(flat, 5, 13).to_vector())
    REQUIRE(std::abs(value - TestType(0.25)) < 1e-6);
}

TEMPLATE_TEST_CASE("resize_area averages PyTorch's adaptive pooling windows", "[io]", float,
                   double) {
  // 1x5 -> 1x2: windows [0, 3) and [2, 5).
  const auto row = hgad::Tensor<TestType>::from_vector({1, 5}, {0, 1, 2, 3, 4});
  require_close(hgad::resize_area(row, 1, 2), {1, 3});
  // 4x4 -> 2x2 is the 2x2 box mean.
  std::vector<TestType> values(16);
  for (int i = 0; i < 16; ++i) values[static_cast<std::size_t>(i)] = TestType(i);
  require_close(hgad::resize_area(hgad::Tensor<TestType>::from_vector({4, 4}, values), 2, 2),
                {(0 + 1 + 4 + 5) / 4.0, (2 + 3 + 6 + 7) / 4.0, (8 + 9 + 12 + 13) / 4.0,
                 (10 + 11 + 14 + 15) / 4.0});
}

TEMPLATE_TEST_CASE("resize_nearest picks Pillow's half-pixel or PyTorch's legacy source pixels",
                   "[io]", float, double) {
  const auto row = hgad::Tensor<TestType>::from_vector({1, 5}, {10, 11, 12, 13, 14});
  // Half-pixel: floor((o + 0.5) 5 / 3) = 0, 2, 4. Legacy: floor(o 5 / 3) = 0, 1, 3.
  require_close(hgad::resize_nearest(row, 1, 3), {10, 12, 14});
  require_close(hgad::resize_nearest(row, 1, 3, false), {10, 11, 13});
  // Upscaling 2 -> 4 repeats each pixel twice; values are copied, never blended.
  const auto mask = hgad::Tensor<TestType>::from_vector({2, 2}, {0, 1, 1, 0});
  require_close(hgad::resize_nearest(mask, 4, 4), {0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0});
  require_close(hgad::resize(mask, 4, 4, hgad::Interpolation::nearest),
                {0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0});
}

TEMPLATE_TEST_CASE("crop, center_crop and resize_shorter_side follow torchvision's offsets", "[io]",
                   float, double) {
  std::vector<TestType> values(2 * 5 * 6);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = TestType(i);
  const auto x = hgad::Tensor<TestType>::from_vector({2, 5, 6}, values);
  const auto c = hgad::crop(x, 1, 2, 2, 3);
  REQUIRE(c.shape() == hgad::Shape({2, 2, 3}));
  require_close(c, {8, 9, 10, 14, 15, 16, 38, 39, 40, 44, 45, 46});
  // 5x6 -> 2x3: top = round(1.5) = 2 (half to even), left = round(1.5) = 2.
  require_close(hgad::center_crop(x, 2, 3), {14, 15, 16, 20, 21, 22, 44, 45, 46, 50, 51, 52});
  // 5x6 -> 4x5: top = round(0.5) = 0, left = round(0.5) = 0.
  REQUIRE(hgad::center_crop(x, 4, 5)(0, 0, 0) == TestType(0));
  // 5x6 -> 2x2: left = round(2) = 2; top = round(1.5) = 2.
  REQUIRE(hgad::center_crop(x, 2, 2)(0, 0, 0) == TestType(14));
  REQUIRE_THROWS_AS(hgad::crop(x, 4, 0, 2, 2), hgad::Error);
  REQUIRE_THROWS_AS(hgad::center_crop(x, 6, 2), hgad::Error);

  REQUIRE(hgad::shorter_side_size(341, 512, 224) ==
          std::array<hgad::Index, 2>{224, 336});  // int(224 * 512 / 341)
  REQUIRE(hgad::shorter_side_size(512, 207, 256) ==
          std::array<hgad::Index, 2>{633, 256});  // int(256 * 512 / 207)
  REQUIRE(hgad::shorter_side_size(300, 300, 256) == std::array<hgad::Index, 2>{256, 256});
  REQUIRE(hgad::resize_shorter_side(x, 10, hgad::Interpolation::bilinear).shape() ==
          hgad::Shape({2, 10, 12}));
}

TEMPLATE_TEST_CASE(
    "normalize_imagenet subtracts the ImageNet mean and divides by its std per channel", "[io]",
    float, double) {
  const auto x =
      hgad::Tensor<TestType>::from_vector({3, 1, 2}, {0.485f, 1, 0.456f, 0, 0.406f, 0.5f});
  require_close(hgad::normalize_imagenet(x),
                {0, (1 - 0.485) / 0.229, 0, (0 - 0.456) / 0.224, 0, (0.5 - 0.406) / 0.225}, 1e-6);
  const auto batch = hgad::Tensor<TestType>::full({2, 3, 1, 1}, TestType(1));
  require_close(hgad::normalize_imagenet(batch),
                {(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225, (1 - 0.485) / 0.229,
                 (1 - 0.456) / 0.224, (1 - 0.406) / 0.225},
                1e-6);
  REQUIRE_THROWS_AS(hgad::normalize_imagenet(hgad::Tensor<TestType>({1, 2, 2})), hgad::Error);
  REQUIRE_THROWS_AS(hgad::normalize(x, {0, 0, 0}, {1, 0, 1}), hgad::Error);
}

TEST_CASE("load_image decodes PNG, BMP and JPEG in gray, gray+alpha, RGB and RGBA", "[io]") {
  hgad_test::TempDir dir("images");
  const int width = 7, height = 5;
  for (const char* format : formats) {
    for (int channels = 1; channels <= 4; ++channels) {
      CAPTURE(format, channels);
      const auto pixels = test_pixels(width, height, channels);
      const std::string path =
          dir.file(std::string("img") + std::to_string(channels) + "." + format);
      hgad_test::write_bytes(path, encode(format, width, height, channels, pixels));
      const hgad::ImageInfo info = hgad::read_image_info(path);
      REQUIRE(info.width == width);
      REQUIRE(info.height == height);

      const auto rgb = hgad::load_image<float>(path);
      REQUIRE(rgb.shape() == hgad::Shape({3, height, width}));
      const bool lossy = std::string(format) == "jpg";
      double max_error = 0;
      for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x)
          for (int k = 0; k < 3; ++k) {
            const float v = rgb(k, y, x);
            REQUIRE(std::isfinite(v));
            REQUIRE(v >= 0.0f);
            REQUIRE(v <= 1.0f);
            max_error = std::max(
                max_error,
                std::abs(double(v) * 255.0 - expected_rgb(pixels, width, channels, x, y, k)));
          }
      // Lossless formats: exact bytes / 255. JPEG at quality 100 with chroma subsampling stays
      // close.
      if (lossy) {
        REQUIRE(max_error < 60.0);
      } else {
        REQUIRE(max_error < 1e-3);
      }
      if (channels <= 2 && !lossy)
        for (int y = 0; y < height; ++y)
          for (int x = 0; x < width; ++x)
            REQUIRE((rgb(0, y, x) == rgb(1, y, x) && rgb(1, y, x) == rgb(2, y, x)));

      const auto gray = hgad::load_image<double>(path, 1);
      REQUIRE(gray.shape() == hgad::Shape({1, height, width}));
      if (channels <= 2 && !lossy)
        REQUIRE(gray(0, 4, 6) * 255.0 ==
                Approx(pixels[static_cast<std::size_t>((4 * width + 6) * channels)]));
    }
  }
}

TEST_CASE("load_image reports unreadable and non-image files with the path and stb's reason",
          "[io]") {
  hgad_test::TempDir dir("bad_images");
  hgad_test::write_bytes(dir.file("text.png"), {'h', 'e', 'l', 'l', 'o'});
  REQUIRE_THROWS_WITH(hgad::load_image<float>(dir.file("text.png")),
                      Catch::Contains(dir.file("text.png")) && Catch::Contains("not a readable"));
  hgad_test::write_bytes(dir.file("empty.jpg"), {});
  REQUIRE_THROWS_WITH(hgad::load_image<float>(dir.file("empty.jpg")),
                      Catch::Contains(dir.file("empty.jpg")));
  REQUIRE_THROWS_WITH(hgad::load_image<float>(dir.file("missing.png")),
                      Catch::Contains(dir.file("missing.png")) && Catch::Contains("cannot open"));

  const auto pixels = test_pixels(16, 16, 3);
  for (const char* format : formats) {
    CAPTURE(format);
    const Bytes valid = encode(format, 16, 16, 3, pixels);
    // Every truncation either decodes (stb tolerates some short JPEGs) or throws hgad::Error.
    for (std::size_t n = 0; n < valid.size(); n += std::max<std::size_t>(1, valid.size() / 97)) {
      try {
        const auto t = hgad::decode_image<float>(valid.data(), n, "cut");
        REQUIRE(t.shape() == hgad::Shape({3, 16, 16}));
      } catch (const hgad::Error& e) {
        REQUIRE(std::string(e.what()).find("'cut'") != std::string::npos);
      }
    }
    REQUIRE_THROWS_WITH(hgad::decode_image<float>(valid.data(), valid.size(), "big", 3, 255),
                        Catch::Contains("exceed the limit"));
    REQUIRE_THROWS_AS(hgad::decode_image<float>(valid.data(), valid.size(), "two", 2), hgad::Error);
  }
}

TEST_CASE("JPEGs with an oversized Huffman table are rejected before stb_image reads them",
          "[io]") {
  // DHT segment: class 0, id 0, sixteen code counts of 17 (272 codes; at most 256 are valid).
  Bytes dht = {0xff, 0xc4, 0x01, 0x23, 0x00};  // length 2 + 17 + 272 = 291 = 0x0123
  for (int i = 0; i < 16; ++i) dht.push_back(17);
  dht.insert(dht.end(), 272, 0);
  const Bytes sof = {0xff, 0xc0, 0x00, 0x0b, 8, 0, 1, 0, 1, 1, 1, 0x11, 0};
  Bytes before = {0xff, 0xd8};
  before.insert(before.end(), dht.begin(), dht.end());
  Bytes after = {0xff, 0xd8};
  after.insert(after.end(), sof.begin(), sof.end());
  after.insert(after.end(), dht.begin(), dht.end());
  for (const Bytes& jpeg : {before, after}) {
    REQUIRE_THROWS_WITH(
        hgad::image_info_from_memory(jpeg.data(), jpeg.size(), "bad.jpg"),
        Catch::Contains("bad.jpg") && Catch::Contains("Huffman table declares 272"));
    REQUIRE_THROWS_WITH(hgad::decode_image<float>(jpeg.data(), jpeg.size(), "bad.jpg"),
                        Catch::Contains("Huffman"));
  }
  // The same table inside an APP1 payload is data stb_image skips, not a table.
  Bytes app = {0xff, 0xd8, 0xff, 0xe1, 0x01, 0x25};  // length 2 + 291
  app.insert(app.end(), dht.begin(), dht.end());
  REQUIRE(hgad::detail::image::jpeg_huffman_problem(app.data(), app.size()).oversized == 0);
  REQUIRE(hgad::detail::image::jpeg_huffman_problem(before.data(), before.size()).oversized == 272);
}

/// A baseline grey JPEG of 8 x 8 pixels made by hand: a quantisation table of ones, DC table 0
/// and AC table 0 of one one-bit code each (symbol 0: a DC difference of 0, then end of block), and
/// one scan whose only block is those two codes, padded with ones: every pixel decodes to 128.
Bytes grey_jpeg() {
  Bytes j = {0xff, 0xd8, 0xff, 0xdb, 0x00, 0x43, 0x00};  // SOI; DQT of 2 + 1 + 64 bytes
  j.insert(j.end(), 64, 1);
  j.insert(j.end(), {0xff, 0xc0, 0x00, 0x0b, 8, 0, 8, 0, 8, 1, 1, 0x11, 0});  // 8 x 8, 1 component
  for (const std::uint8_t table : {0x00, 0x10}) {  // DHT of 2 + 1 + 16 + 1 bytes: DC 0, AC 0
    j.insert(j.end(), {0xff, 0xc4, 0x00, 0x14, table, 1});
    j.insert(j.end(), 16, 0);  // fifteen more code counts of 0, then the one symbol, 0
  }
  j.insert(j.end(), {0xff, 0xda, 0x00, 0x08, 1, 1, 0x00, 0, 63, 0});  // SOS: component 1, tables 0
  j.insert(j.end(), {0x3f, 0xff, 0xd9});  // the codes 0 and 0, padding; EOI
  return j;
}

TEST_CASE(
    "JPEGs whose scan uses a Huffman table no DHT defined are rejected before stb_image "
    "decodes them",
    "[io]") {
  const Bytes valid = grey_jpeg();
  REQUIRE(hgad::detail::image::jpeg_huffman_problem(valid.data(), valid.size()).undefined.empty());
  const hgad::Tensor<float> grey =
      hgad::decode_image<float>(valid.data(), valid.size(), "grey.jpg");
  REQUIRE(grey.shape() == hgad::Shape({3, 8, 8}));
  for (const float v : grey.to_vector()) REQUIRE(v == 128.0f / 255.0f);
  // Either table renamed to id 3, which the scan does not use: the scan's own table is undefined
  // (the fuzzer's case: stb_image would decode with memory no DHT wrote).
  const std::size_t dc_byte = 2 + 69 + 13 + 4, ac_byte = dc_byte + 22;  // segments of 69, 13, 22
  for (const std::size_t at : {dc_byte, ac_byte}) {
    Bytes bad = valid;
    REQUIRE(bad[at] == (at == dc_byte ? 0x00 : 0x10));
    bad[at] |= 3;
    const std::string expected = at == dc_byte ? "DC table 0" : "AC table 0";
    CHECK(hgad::detail::image::jpeg_huffman_problem(bad.data(), bad.size()).undefined == expected);
    CHECK_THROWS_WITH(hgad::decode_image<float>(bad.data(), bad.size(), "bad.jpg"),
                      Catch::Contains("'bad.jpg': corrupt JPEG: a scan uses the Huffman " +
                                      expected + ", which no DHT segment before it defines"));
  }
  // A table defined only after the scan that uses it is undefined for that scan: the DC table's
  // segment moved behind the scan header (stb_image reads the scan's data before that segment).
  const auto at = [&](std::size_t i) { return valid.begin() + std::ptrdiff_t(i); };
  const std::size_t dht = dc_byte - 4, sos = dht + 2 * 22, data = sos + 10;
  REQUIRE((valid[dht + 1] == 0xc4 && valid[sos + 1] == 0xda));
  Bytes late(valid.begin(), at(dht));
  late.insert(late.end(), at(dht + 22), at(data));
  late.insert(late.end(), at(dht), at(dht + 22));
  late.insert(late.end(), at(data), valid.end());
  REQUIRE(late.size() == valid.size());
  CHECK(hgad::detail::image::jpeg_huffman_problem(late.data(), late.size()).undefined ==
        "DC table 0");
  CHECK_THROWS_WITH(hgad::decode_image<float>(late.data(), late.size(), "late.jpg"),
                    Catch::Contains("DC table 0"));
}

TEST_CASE("PNGs with a chunk longer than the file are rejected before stb_image allocates for it",
          "[io]") {
  const Bytes png = encode("png", 5, 4, 3, test_pixels(5, 4, 3));
  const std::size_t after_ihdr = 8 + 25;  // signature, then the 25-byte IHDR chunk stb writes first
  const auto with_chunk = [&](const char* type, std::uint32_t length) {
    Bytes chunk = {std::uint8_t(length >> 24), std::uint8_t(length >> 16),
                   std::uint8_t(length >> 8), std::uint8_t(length)};
    chunk.insert(chunk.end(), type, type + 4);
    chunk.insert(chunk.end(), {1, 2, 3});
    Bytes out = png;
    out.insert(out.begin() + static_cast<std::ptrdiff_t>(after_ihdr), chunk.begin(), chunk.end());
    return out;
  };
  // An IDAT declaring 2 GiB - 1: stb_image would grow its data buffer to 2 GiB before reading it.
  const Bytes idat = with_chunk("IDAT", 0x7fffffff);
  const std::size_t remaining = png.size() - after_ihdr + 3;
  REQUIRE_THROWS_WITH(
      hgad::decode_image<float>(idat.data(), idat.size(), "bomb.png"),
      Catch::Contains("'bomb.png': truncated PNG: chunk 'IDAT' declares 2147483647 bytes where " +
                      std::to_string(remaining) + " remain"));
  REQUIRE_THROWS_WITH(hgad::image_info_from_memory(idat.data(), idat.size(), "bomb.png"),
                      Catch::Contains("truncated PNG"));
  const Bytes ancillary = with_chunk("tEXt", std::uint32_t(remaining + 1));
  REQUIRE(hgad::detail::image::overlong_png_chunk(ancillary.data(), ancillary.size()).type ==
          "tEXt");
  REQUIRE_THROWS_AS(hgad::decode_image<float>(ancillary.data(), ancillary.size(), "a.png"),
                    hgad::Error);
  // A chunk that ends exactly at the end of the file is whole; IEND's length is never read.
  REQUIRE(hgad::detail::image::overlong_png_chunk(png.data(), png.size()).type.empty());
  Bytes iend = png;
  const std::size_t iend_at = iend.size() - 12;
  REQUIRE(std::string(iend.begin() + static_cast<std::ptrdiff_t>(iend_at + 4), iend.end() - 4) ==
          "IEND");
  iend[iend_at] = 0x7f;
  REQUIRE(hgad::decode_image<float>(iend.data(), iend.size(), "iend.png").shape() ==
          hgad::Shape({3, 4, 5}));
  // Not a PNG: nothing to walk.
  const Bytes bmp = encode("bmp", 5, 4, 3, test_pixels(5, 4, 3));
  REQUIRE(hgad::detail::image::overlong_png_chunk(bmp.data(), bmp.size()).type.empty());
}

TEST_CASE("save_png writes 8-bit gray and RGB PNGs atomically that load back to the rounded values",
          "[io]") {
  hgad_test::TempDir dir("save_png");
  hgad::Rng rng(11);
  const auto rgb = hgad::Tensor<float>::uniform({3, 6, 9}, rng, -0.2f, 1.2f);
  hgad::save_png(dir.file("rgb.png"), rgb);
  const auto back = hgad::load_image<float>(dir.file("rgb.png"));
  REQUIRE(back.shape() == rgb.shape());
  for (hgad::Index i = 0; i < rgb.numel(); ++i) {
    const double clamped = std::min(1.0, std::max(0.0, double(rgb.data()[i])));
    REQUIRE(double(back.data()[i]) * 255.0 == Approx(std::round(clamped * 255.0)));
  }
  auto gray = hgad::Tensor<double>::from_vector({2, 3}, {0, 0.5, 1, std::nan(""), 0.2, 2});
  hgad::save_png(dir.file("gray.png"), gray);
  REQUIRE(hgad::read_image_info(dir.file("gray.png")).channels == 1);
  require_close(hgad::load_image<double>(dir.file("gray.png"), 1),
                {0, 128 / 255.0, 1, 0, 51 / 255.0, 1}, 1e-12);
  hgad::save_png(dir.file("mask.png"), hgad::Tensor<float>::ones({1, 4, 4}));
  REQUIRE(hgad::read_image_info(dir.file("mask.png")).channels == 1);
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    REQUIRE(entry.path().extension() == ".png");
  REQUIRE_THROWS_AS(hgad::save_png(dir.file("bad.png"), hgad::Tensor<float>({2, 4, 4})),
                    hgad::Error);
  REQUIRE_THROWS_WITH(hgad::save_png("/nonexistent/dir/x.png", gray),
                      Catch::Contains("/nonexistent/dir/x.png"));
}

TEST_CASE("colormap_jet follows matplotlib's jet segments and blend mixes images", "[io]") {
  const auto heat = hgad::Tensor<double>::from_vector({1, 4}, {0, 0.5, 1, std::nan("")});
  const auto rgb = hgad::colormap_jet(heat, 0.0, 1.0);
  REQUIRE(rgb.shape() == hgad::Shape({3, 1, 4}));
  // t = 0: (0, 0, 0.5); t = 1: (0.5, 0, 0); t = 0.5: red (0.5 - 0.35) / 0.31, green 1, blue 1 -
  // (0.5 - 0.34) / 0.31.
  require_close(rgb,
                {0, 0.15 / 0.31, 0.5, 0,  //
                 0, 1, 0, 0,              //
                 0.5, 1 - 0.16 / 0.31, 0, 0.5},
                1e-12);
  // Automatic range: the finite minimum and maximum.
  const auto scaled = hgad::Tensor<double>::from_vector({2, 2}, {2, 4, 3, std::nan("")});
  REQUIRE(hgad::colormap_jet(scaled).to_vector() ==
          hgad::colormap_jet(hgad::Tensor<double>::from_vector({2, 2}, {0, 1, 0.5, 0}), 0.0, 1.0)
              .to_vector());

  const auto base = hgad::Tensor<double>::from_vector({1, 1, 2}, {0.2, 1.0});
  const auto overlay = hgad::Tensor<double>::from_vector({3, 1, 2}, {1, 0, 0, 1, 0.5, 0.5});
  require_close(hgad::blend(base, overlay, 0.25), {0.4, 0.75, 0.15, 1.0, 0.275, 0.875}, 1e-12);
  REQUIRE_THROWS_AS(hgad::blend(base, overlay, 1.5), hgad::Error);
}

TEST_CASE("The cat.bmp crop normalised with ImageNet statistics equals the golden network input",
          "[io]") {
  const std::string dir = std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet/golden";
  if (!std::filesystem::exists(dir + "/cat.bmp")) {
    WARN("skipped: " << dir << " is absent");
    return;
  }
  const auto image = hgad::load_image<float>(dir + "/cat.bmp");
  REQUIRE(image.shape() == hgad::Shape({3, 341, 512}));
  const auto input = hgad::normalize_imagenet(hgad::crop(image, 58, 144, 224, 224));
  const auto golden = hgad::load_npy<float>(dir + "/cat_crop224_input_chw.npy");
  REQUIRE(input.shape() == golden.shape());
  double max_error = 0;
  for (hgad::Index i = 0; i < input.numel(); ++i) {
    REQUIRE(std::isfinite(input.data()[i]));
    max_error = std::max(max_error, double(std::abs(input.data()[i] - golden.data()[i])));
  }
  CAPTURE(max_error);
  REQUIRE(max_error < 2e-6);
}

}  // namespace image_test
