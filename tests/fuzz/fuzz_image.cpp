// libFuzzer target: PNG/JPEG/BMP decoding (stb_image from memory) followed by the resampling
// functions on whatever decodes. Bad input must raise hgad::Error; decoded pixels must lie in [0,
// 1].

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <hgad/io/image.hpp>

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

// 2^20 pixels keeps one input's decode in the millisecond range; larger headers must be rejected.
constexpr std::int64_t max_pixels = std::int64_t(1) << 20;

void check_pixels(const hgad::Tensor<float>& t) {
  for (float v : t.to_vector()) require(v >= 0.0f && v <= 1.0f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const hgad::ImageInfo info = hgad::image_info_from_memory(data, size, "fuzz");
    require(info.channels >= 1 && info.channels <= 4);
  } catch (const hgad::Error&) {
  }
  for (int channels : {3, 1}) {
    try {
      const auto image = hgad::decode_image<float>(data, size, "fuzz", channels, max_pixels);
      require(image.rank() == 3 && image.dim(0) == channels);
      require(image.dim(1) * image.dim(2) <= max_pixels);
      check_pixels(image);
      if (channels == 3) {
        check_pixels(hgad::resize_bilinear(image, 5, 7, true));
        check_pixels(hgad::resize_bilinear(image, 3, 2, false));
        const auto aa = hgad::resize_bilinear_antialias(image, 7, 3);
        for (float v : aa.to_vector()) require(v >= -1e-5f && v <= 1.0f + 1e-5f);
        check_pixels(hgad::resize_nearest(image, 4, 9));
        const auto area = hgad::resize_area(image, 2, 3);
        for (float v : area.to_vector()) require(v >= -1e-5f && v <= 1.0f + 1e-5f);
        const hgad::Index side = std::min(image.dim(1), image.dim(2));
        check_pixels(hgad::center_crop(image, side, side));
        const auto x = hgad::normalize_imagenet(image);
        for (float v : x.to_vector()) require(std::isfinite(v));
      }
    } catch (const hgad::Error&) {
    }
  }
  return 0;
}
