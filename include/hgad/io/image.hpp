#pragma once
/// \file
/// Images in and out: PNG/JPEG/BMP decoding into float (C, H, W) tensors in [0, 1], the resampling
/// filters of the HGAD and PaDiM pipelines, crops, ImageNet normalisation, 8-bit PNG writing and
/// heat-map pictures.
///
///     auto img = hgad::load_image<float>("bottle/test/broken_large/000.png");   // (3, H, W) in
///     [0, 1] img = hgad::resize_bilinear_antialias(img, 256, 256);                      // PIL
///     BILINEAR auto x = hgad::normalize_imagenet(img);                                    //
///     network input hgad::save_png("heat.png", hgad::blend(img, hgad::colormap_jet(score), 0.5));
///
/// Decoding uses stb_image (Debian's libstb-dev, include directory /usr/include/stb), compiled here
/// with `static` linkage and only its PNG, JPEG and BMP decoders: users define nothing, and several
/// translation units that include this header link together. A translation unit that includes
/// this header must not define STB_IMAGE_IMPLEMENTATION or STB_IMAGE_WRITE_IMPLEMENTATION itself,
/// and must include this header before any <stb_image.h> / <stb_image_write.h> of its own.
///
/// Pixel conventions: a tensor image is (C, H, W), row-major, channel order R, G, B, values in
/// [0, 1] (byte / 255). The resampling functions work on the last two axes of any tensor of rank
/// 2 to 4, so (H, W), (C, H, W) and (N, C, H, W) all work.

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../detail/check.hpp"
#include "../detail/parallel.hpp"
#include "../tensor.hpp"
#include "detail/file.hpp"

#if defined(STBI_INCLUDE_STB_IMAGE_H) || defined(INCLUDE_STB_IMAGE_WRITE_H)
#error \
    "hgad/io/image.hpp compiles its own static stb_image; include it before <stb_image.h> and <stb_image_write.h>"
#endif

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
// stb_image's internal assertions abort the process in builds without NDEBUG. One of them
// (stbi__jpeg_huff_decode, Debian's 2022-09 stb_image) fails on corrupt JPEG entropy data that the
// fuzzer reaches; with the assertion compiled out, as in every NDEBUG build, such a file decodes to
// garbage pixels without any memory error (checked under ASan + UBSan). A library embedded in a
// server must not abort on hostile input, so the assertions are off in every build.
#define STBI_ASSERT(x) ((void)0)
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wsign-conversion"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wold-style-cast"
#pragma GCC diagnostic ignored "-Wcast-qual"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuseless-cast"
#endif
#endif
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunknown-warning-option"
#pragma clang diagnostic ignored "-Wunused-function"
#pragma clang diagnostic ignored "-Wcomma"
#pragma clang diagnostic ignored "-Wcast-align"
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#undef STB_IMAGE_IMPLEMENTATION
#undef STB_IMAGE_WRITE_IMPLEMENTATION
#undef STBI_ONLY_PNG
#undef STBI_ONLY_JPEG
#undef STBI_ONLY_BMP
#undef STBI_ASSERT

namespace hgad {

/// Largest image (width x height) the decoders accept before allocating: PIL's decompression-bomb
/// limit `Image.MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3` (Pillow PIL/Image.py).
inline constexpr std::int64_t default_max_image_pixels = 89478485;

/// The ImageNet statistics of torchvision's pretrained models (torchvision.transforms.Normalize in
/// the ImageNet reference scripts), channel order R, G, B.
inline constexpr std::array<double, 3> imagenet_mean = {0.485, 0.456, 0.406};
inline constexpr std::array<double, 3> imagenet_std = {0.229, 0.224, 0.225};

/// Size and channel count of an image file, read from its header only.
struct ImageInfo {
  int width = 0;
  int height = 0;
  int channels = 0;  ///< as stored: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA
};

/// The resampling filters of `resize`.
enum class Interpolation {
  nearest,             ///< resize_nearest (PIL NEAREST / PyTorch 'nearest-exact')
  bilinear,            ///< resize_bilinear (PyTorch 'bilinear', antialias=False)
  bilinear_antialias,  ///< resize_bilinear_antialias (PIL BILINEAR)
  area,                ///< resize_area (PyTorch 'area', adaptive average pooling)
};

namespace detail::image {

inline void check_decodable_size(std::size_t size, const std::string& name) {
  check(size <= static_cast<std::size_t>(std::numeric_limits<int>::max()), "image: '", name,
        "': ", size, " bytes exceed the 2 GiB the decoder accepts");
}

/// The planes of a tensor of rank 2..4 whose last two axes are (H, W).
struct Planes {
  Index n_planes;
  Index height;
  Index width;
};

template <class Scalar>
Planes planes_of(const Tensor<Scalar>& x, const char* what) {
  check(x.device() == Device::cpu, what, ": the tensor lives on ", hgad::to_string(x.device()),
        "; copy it with .cpu() first");
  check(x.rank() >= 2, what,
        ": expected a tensor of rank 2 to 4 whose last two axes are (H, W), got shape ",
        x.shape());
  const Index h = x.dim(x.rank() - 2), w = x.dim(x.rank() - 1);
  return {h * w == 0 ? 0 : x.numel() / (h * w), h, w};
}

template <class Scalar>
Shape with_plane_size(const Shape& shape, Index height, Index width) {
  std::vector<Index> dims = shape.dims();
  dims[dims.size() - 2] = height;
  dims[dims.size() - 1] = width;
  return Shape(dims);
}

/// One output coordinate of a two-tap linear interpolation: out = (1 - w1) in[i0] + w1 in[i1].
template <class Scalar>
struct LinearTap {
  Index i0;
  Index i1;
  Scalar w1;
};

/// PyTorch's `area_pixel_compute_source_index` (aten/src/ATen/native/UpSample.h) for the linear
/// modes: src = dst * (in - 1) / (out - 1) with align_corners, else src = (dst + 0.5) * in / out -
/// 0.5 clamped at 0; i0 = floor(src), i1 = min(i0 + 1, in - 1), w1 = src - i0.
template <class Scalar>
std::vector<LinearTap<Scalar>> linear_taps(Index n_in, Index n_out, bool align_corners) {
  std::vector<LinearTap<Scalar>> taps(static_cast<std::size_t>(n_out));
  const Scalar scale = align_corners
                           ? (n_out > 1 ? Scalar(n_in - 1) / Scalar(n_out - 1) : Scalar(0))
                           : Scalar(n_in) / Scalar(n_out);
  for (Index o = 0; o < n_out; ++o) {
    Scalar src =
        align_corners ? scale * Scalar(o) : scale * (Scalar(o) + Scalar(0.5)) - Scalar(0.5);
    if (src < Scalar(0)) src = Scalar(0);
    Index i0 = static_cast<Index>(src);
    if (i0 > n_in - 1) i0 = n_in - 1;
    const Index i1 = std::min(i0 + 1, n_in - 1);
    taps[static_cast<std::size_t>(o)] = {i0, i1, src - Scalar(i0)};
  }
  return taps;
}

/// Weights of one output coordinate of a separable filter: out = sum_k weights[k] in[first + k].
struct FilterTaps {
  Index first;
  std::vector<double> weights;
};

/// Pillow's `precompute_coeffs` (src/libImaging/Resample.c) for the BILINEAR (triangle) filter:
/// scale = in / out, filter_scale = max(scale, 1), support = filter_scale, centre = (o + 0.5)
/// scale; taps x in [trunc(centre - support + 0.5), trunc(centre + support + 0.5)) clipped to [0,
/// in), weight tri((x - centre + 0.5) / filter_scale) with tri(t) = max(0, 1 - |t|), normalised to
/// sum 1.
inline std::vector<FilterTaps> antialias_taps(Index n_in, Index n_out) {
  std::vector<FilterTaps> taps(static_cast<std::size_t>(n_out));
  const double scale = double(n_in) / double(n_out);
  const double filter_scale = std::max(scale, 1.0);
  const double support = filter_scale;
  for (Index o = 0; o < n_out; ++o) {
    const double centre = (double(o) + 0.5) * scale;
    const Index lo = std::max<Index>(static_cast<Index>(centre - support + 0.5), 0);
    const Index hi = std::min<Index>(static_cast<Index>(centre + support + 0.5), n_in);
    FilterTaps& t = taps[static_cast<std::size_t>(o)];
    t.first = lo;
    double total = 0;
    for (Index x = lo; x < hi; ++x) {
      const double w = std::max(0.0, 1.0 - std::abs((double(x) - centre + 0.5) / filter_scale));
      t.weights.push_back(w);
      total += w;
    }
    if (total != 0)
      for (double& w : t.weights) w /= total;
  }
  return taps;
}

/// Adaptive average pooling windows (PyTorch `adaptive_avg_pool2d`, used by interpolate 'area'):
/// output o averages inputs [floor(o in / out), ceil((o + 1) in / out)).
inline std::vector<FilterTaps> area_taps(Index n_in, Index n_out) {
  std::vector<FilterTaps> taps(static_cast<std::size_t>(n_out));
  for (Index o = 0; o < n_out; ++o) {
    const Index lo = (o * n_in) / n_out;
    const Index hi = ((o + 1) * n_in + n_out - 1) / n_out;
    FilterTaps& t = taps[static_cast<std::size_t>(o)];
    t.first = lo;
    t.weights.assign(static_cast<std::size_t>(hi - lo), 1.0 / double(hi - lo));
  }
  return taps;
}

/// Applies separable filters: rows first (W_in -> W_out), then columns (H_in -> H_out).
template <class Scalar>
Tensor<Scalar> separable_resize(const Tensor<Scalar>& x, Index out_h, Index out_w,
                                const std::vector<FilterTaps>& rows,
                                const std::vector<FilterTaps>& cols, const char* what) {
  const Planes p = planes_of(x, what);
  Tensor<Scalar> out = Tensor<Scalar>::empty(with_plane_size<Scalar>(x.shape(), out_h, out_w));
  const Scalar* in = x.data();
  Scalar* dst = out.data();
  parallel_for(p.n_planes, p.n_planes * (p.height * out_w + out_h * out_w) * 4, [&](Index plane) {
    std::vector<double> horizontal(static_cast<std::size_t>(p.height * out_w));  // (H_in, W_out)
    const Scalar* src = in + plane * p.height * p.width;
    for (Index y = 0; y < p.height; ++y)
      for (Index o = 0; o < out_w; ++o) {
        const FilterTaps& t = cols[static_cast<std::size_t>(o)];
        double sum = 0;
        for (std::size_t k = 0; k < t.weights.size(); ++k)
          sum += t.weights[k] * double(src[y * p.width + t.first + static_cast<Index>(k)]);
        horizontal[static_cast<std::size_t>(y * out_w + o)] = sum;
      }
    Scalar* plane_out = dst + plane * out_h * out_w;
    for (Index o = 0; o < out_h; ++o) {
      const FilterTaps& t = rows[static_cast<std::size_t>(o)];
      for (Index x_out = 0; x_out < out_w; ++x_out) {
        double sum = 0;
        for (std::size_t k = 0; k < t.weights.size(); ++k)
          sum += t.weights[k] * horizontal[static_cast<std::size_t>(
                                    (t.first + static_cast<Index>(k)) * out_w + x_out)];
        plane_out[o * out_w + x_out] = static_cast<Scalar>(sum);
      }
    }
  });
  return out;
}

inline void check_output_size(Index out_h, Index out_w, const char* what) {
  check(out_h > 0 && out_w > 0, what, ": output size ", out_h, "x", out_w, " must be positive");
}

template <class Scalar>
void check_nonempty_input(const Planes& p, const char* what) {
  check(p.height > 0 && p.width > 0, what, ": cannot resample an empty ", p.height, "x", p.width,
        " image");
}

/// Python's round() of d / 2 for an integer d >= 0 (round half to even), as torchvision's
/// center_crop computes its offsets with `int(round((H - h) / 2.0))`.
inline Index half_round_even(Index d) {
  const Index q = d / 2;
  if (d % 2 == 0) return q;
  return q % 2 == 0 ? q : q + 1;
}

/// matplotlib's 'jet' segment data (lib/matplotlib/_cm.py, `_jet_data`): (x, value) pairs per
/// channel.
inline double jet_channel(const double* xs, const double* ys, int n, double t) {
  for (int i = 1; i < n; ++i)
    if (t <= xs[i]) return ys[i - 1] + (ys[i] - ys[i - 1]) * (t - xs[i - 1]) / (xs[i] - xs[i - 1]);
  return ys[n - 1];
}

inline std::array<double, 3> jet(double t) {
  static const double red_x[] = {0.0, 0.35, 0.66, 0.89, 1.0}, red_y[] = {0.0, 0.0, 1.0, 1.0, 0.5};
  static const double green_x[] = {0.0, 0.125, 0.375, 0.64, 0.91, 1.0},
                      green_y[] = {0.0, 0.0, 1.0, 1.0, 0.0, 0.0};
  static const double blue_x[] = {0.0, 0.11, 0.34, 0.65, 1.0}, blue_y[] = {0.5, 1.0, 1.0, 0.0, 0.0};
  return {jet_channel(red_x, red_y, 5, t), jet_channel(green_x, green_y, 6, t),
          jet_channel(blue_x, blue_y, 5, t)};
}

inline void append_bytes(void* context, void* data, int size) {
  auto* out = static_cast<std::vector<std::uint8_t>*>(context);
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  out->insert(out->end(), bytes, bytes + size);
}

/// A byte reader with stb_image's semantics: reads past the end yield 0, skips clamp at the end.
struct StbByteReader {
  const std::uint8_t* bytes;
  std::size_t size;
  std::size_t pos = 0;

  int get8() { return pos < size ? bytes[pos++] : 0; }
  int get16() {
    const int high = get8();
    return (high << 8) + get8();
  }
  bool at_end() const { return pos >= size; }
  void skip(long n) { pos = n < 0 ? size : std::min(size, pos + static_cast<std::size_t>(n)); }
  /// stb_image's stbi__get_marker: 0xff ("no marker") unless the next byte is 0xff, then the byte
  /// after any run of 0xff fill bytes.
  int marker() {
    int x = get8();
    if (x != 0xff) return 0xff;
    while (x == 0xff) x = get8();
    return x;
  }
};

/// Reads a DHT segment body the way stb_image's stbi__process_marker does. Returns the code count
/// of the first table with more than 256 codes (0 if none) and the segment length left over
/// (stb_image accepts the segment only when it is 0); marks in `defined[class][id]` each table it
/// builds (class 0 DC, 1 AC).
inline std::array<long, 2> jpeg_dht_overflow(StbByteReader& r, bool (&defined)[2][4]) {
  long left = r.get16() - 2;
  while (left > 0) {
    const int q = r.get8();
    if ((q >> 4) > 1 || (q & 15) > 3) return {0, -1};  // stb_image rejects the table class or id
    long n = 0;
    for (int i = 0; i < 16; ++i) n += r.get8();
    if (n > 256) return {n, left};
    defined[q >> 4][q & 15] = true;
    r.skip(n);
    left -= 17 + n;
  }
  return {0, left};
}

/// The Huffman tables of a JPEG that Debian's stb_image (libstb-dev 0.0~git20220908) must not
/// see: it builds a table without checking that its 16 code counts sum to at most 256 (ITU-T T.81,
/// B.2.4.2), and then writes past the table's arrays; and it decodes a scan with the tables the
/// scan header names whether or not a DHT segment built them, reading whatever its uncleared
/// memory holds (and past the table's arrays when that is small).
struct JpegHuffmanProblem {
  long oversized = 0;     ///< the code count of the first table with more than 256 codes, or 0
  std::string undefined;  ///< the first table a scan uses before a DHT defines it ("AC table 1")
};

/// Walks the marker segments up to the first scan exactly as stb_image's stbi__decode_jpeg_header
/// does, and after it (where stb_image's position depends on entropy decoding) takes every 0xFF
/// 0xC4 pair as a DHT segment and every 0xFF 0xDA pair as a scan header, neither of which can occur
/// inside valid entropy-coded data (so there a table counts as defined by a pair stb_image might
/// not reach; up to the first scan the walk is exact). A sequential scan uses its components' DC
/// and AC tables; a progressive one its DC tables in a first DC scan (Ss = 0, Ah = 0), none in a
/// DC refinement, its AC tables in an AC scan (stb_image's stbi__parse_entropy_coded_data).
inline JpegHuffmanProblem jpeg_huffman_problem(const std::uint8_t* bytes, std::size_t size) {
  StbByteReader r{bytes, size};
  if (r.marker() != 0xd8) return {};  // not a JPEG to stb_image
  bool defined[2][4] = {};
  bool progressive = false;
  // A scan header at r's position (after its marker): the first table it uses undefined, or "".
  const auto undefined_in_scan = [&](StbByteReader& scan) -> std::string {
    const long length = scan.get16();
    const int n = scan.get8();
    if (n < 1 || n > 4 || length != 6 + 2 * n) return "";  // stb_image rejects the header
    int tables[4][2] = {};
    for (int i = 0; i < n; ++i) {
      scan.get8();  // the component's id
      const int q = scan.get8();
      tables[i][0] = q >> 4;
      tables[i][1] = q & 15;
    }
    const int spectral_start = scan.get8();
    scan.get8();
    const int high = scan.get8() >> 4;
    const bool uses[2] = {!progressive || (spectral_start == 0 && high == 0),
                          !progressive || spectral_start != 0};
    for (int i = 0; i < n; ++i)
      for (int c = 0; c < 2; ++c)
        if (uses[c] && tables[i][c] <= 3 && !defined[c][tables[i][c]])
          return std::string(c == 0 ? "DC" : "AC") + " table " + std::to_string(tables[i][c]);
    return "";
  };
  // Each segment up to the first scan header as stb_image reads it.
  for (int m = r.marker(); m != 0xda;) {
    bool header_ok = true;
    if (m == 0xc4) {
      const auto dht = jpeg_dht_overflow(r, defined);
      if (dht[0] != 0) return {dht[0], ""};
      header_ok = dht[1] == 0;
    } else if (m == 0xdd) {
      header_ok = r.get16() == 4;
      r.get16();
    } else if (m == 0xdb) {
      long left = r.get16() - 2;
      while (header_ok && left > 0) {
        const int q = r.get8();
        header_ok = ((q >> 4) == 0 || (q >> 4) == 1) && (q & 15) <= 3;
        r.skip((q >> 4) ? 128 : 64);
        left -= (q >> 4) ? 129 : 65;
      }
      header_ok = header_ok && left == 0;
    } else if ((m >= 0xe0 && m <= 0xef) || m == 0xfe || m == 0xc0 || m == 0xc1 || m == 0xc2) {
      progressive = progressive || m == 0xc2;  // a second frame header is stb_image's error
      const long length = r.get16();
      header_ok = length >= 2;
      r.skip(length - 2);
    } else {
      header_ok = false;  // stb_image stops at an unknown or missing marker
    }
    if (!header_ok) return {};
    m = r.marker();
    while (m == 0xff) {
      if (r.at_end()) return {};
      m = r.marker();
    }
  }
  std::string undefined = undefined_in_scan(r);
  if (!undefined.empty()) return {0, std::move(undefined)};
  for (std::size_t i = r.pos; i + 1 < size; ++i) {
    if (bytes[i] != 0xff || (bytes[i + 1] != 0xc4 && bytes[i + 1] != 0xda)) continue;
    StbByteReader tail{bytes, size, i + 2};
    if (bytes[i + 1] == 0xc4) {
      const long n = jpeg_dht_overflow(tail, defined)[0];
      if (n != 0) return {n, ""};
    } else {
      undefined = undefined_in_scan(tail);
      if (!undefined.empty()) return {0, std::move(undefined)};
    }
  }
  return {};
}

/// A PNG chunk whose declared length runs past the end of the file.
struct OverlongPngChunk {
  std::string type;           ///< the chunk's four-letter type; empty when there is none
  std::uint32_t length = 0;   ///< the length its header declares
  std::size_t remaining = 0;  ///< the bytes after its header
};

/// stb_image grows its buffer for the compressed image data to an IDAT chunk's declared length
/// before it reads the chunk, so a file of a few bytes that declares a 2 GiB chunk makes it
/// allocate 2 GiB (and then fail for want of data). This walks the chunks from the signature to
/// IEND as stb_image's stbi__parse_png_file does (every chunk it accepts occupies its declared
/// length, then a CRC that it does not check) and returns the first chunk before IEND whose data
/// runs past the end of `bytes`. stb_image rejects every such file anyway: a short IDAT for want of
/// data, a short ancillary chunk at the zero-type chunk read past the end.
inline OverlongPngChunk overlong_png_chunk(const std::uint8_t* bytes, std::size_t size) {
  static constexpr std::uint8_t signature[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  if (size < 8 || !std::equal(signature, signature + 8, bytes)) return {};  // not a PNG
  for (StbByteReader r{bytes, size, 8}; size - r.pos >= 8;) {
    const std::uint32_t high = static_cast<std::uint32_t>(r.get16());
    const std::uint32_t length = (high << 16) | static_cast<std::uint32_t>(r.get16());
    std::string type(reinterpret_cast<const char*>(bytes + r.pos), 4);
    if (type == "IEND") break;  // stb_image stops here without reading the chunk's data
    for (char& c : type)        // printable in the message
      if (!std::isalpha(static_cast<unsigned char>(c))) c = '?';
    r.skip(4);
    if (length > size - r.pos) return {std::move(type), length, size - r.pos};
    r.skip(static_cast<long>(length) + 4);  // the data, then the CRC
  }
  return {};
}

/// Throws hgad::Error when `bytes` must not reach stb_image (see jpeg_huffman_problem and
/// overlong_png_chunk).
inline void check_safe_for_stb(const std::uint8_t* bytes, std::size_t size,
                               const std::string& name) {
  const JpegHuffmanProblem huffman = jpeg_huffman_problem(bytes, size);
  check(huffman.oversized == 0, "image: '", name, "': corrupt JPEG: a Huffman table declares ",
        huffman.oversized, " codes (at most 256)");
  check(huffman.undefined.empty(), "image: '", name, "': corrupt JPEG: a scan uses the Huffman ",
        huffman.undefined, ", which no DHT segment before it defines");
  const OverlongPngChunk chunk = overlong_png_chunk(bytes, size);
  check(chunk.type.empty(), "image: '", name, "': truncated PNG: chunk '", chunk.type,
        "' declares ", chunk.length, " bytes where ", chunk.remaining, " remain");
}

}  // namespace detail::image

/// Width, height and stored channel count of the PNG/JPEG/BMP image in `bytes[0, size)`, from its
/// header. Throws hgad::Error naming `name` and stb_image's reason when it is not such an image.
inline ImageInfo image_info_from_memory(const std::uint8_t* bytes, std::size_t size,
                                        const std::string& name) {
  detail::image::check_decodable_size(size, name);
  detail::image::check_safe_for_stb(bytes, size, name);
  ImageInfo info;
  const int ok = stbi_info_from_memory(bytes, static_cast<int>(size), &info.width, &info.height,
                                       &info.channels);
  check(ok != 0, "image: '", name, "': not a readable PNG, JPEG or BMP image (",
        stbi_failure_reason(), ")");
  return info;
}

/// Width, height and stored channel count of the image file at `path`.
inline ImageInfo read_image_info(const std::string& path) {
  const std::vector<std::uint8_t> bytes = detail::io::read_file_bytes(path, "image");
  return image_info_from_memory(bytes.data(), bytes.size(), path);
}

/// Decodes the PNG, JPEG or BMP image in `bytes[0, size)` into a (n_channels, H, W) tensor with
/// values byte / 255 in [0, 1].
///
/// n_channels = 3: gray is replicated to R = G = B, alpha is dropped. n_channels = 1: colour is
/// reduced to stb_image's luma (77 R + 150 G + 29 B) >> 8 (PIL's 'L' uses 0.299, 0.587, 0.114),
/// alpha is dropped. 16-bit PNGs are reduced to 8 bits by stb_image. JPEG decoding uses stb_image's
/// IDCT, which can differ from libjpeg (PIL) by one grey level on some pixels. requires: n_channels
/// is 1 or 3; width * height <= max_pixels (checked from the header before any pixel is decoded).
/// Throws hgad::Error naming `name` and stb_image's reason on bad input.
template <class Scalar = float>
Tensor<Scalar> decode_image(const std::uint8_t* bytes, std::size_t size, const std::string& name,
                            int n_channels = 3,
                            std::int64_t max_pixels = default_max_image_pixels) {
  check(n_channels == 1 || n_channels == 3, "image: '", name, "': n_channels must be 1 or 3, got ",
        n_channels);
  const ImageInfo info = image_info_from_memory(bytes, size, name);
  check(info.width > 0 && info.height > 0, "image: '", name, "': empty image ", info.width, "x",
        info.height);
  check(std::int64_t(info.width) * std::int64_t(info.height) <= max_pixels, "image: '", name,
        "': ", info.width, "x", info.height, " pixels exceed the limit of ", max_pixels);
  int width = 0, height = 0, stored = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(bytes, static_cast<int>(size), &width, &height, &stored, n_channels),
      stbi_image_free);
  check(pixels != nullptr, "image: '", name, "': cannot decode (", stbi_failure_reason(), ")");
  check(width == info.width && height == info.height, "image: '", name, "': header says ",
        info.width, "x", info.height, " but ", width, "x", height, " pixels were decoded");
  const Index h = height, w = width, c = n_channels;
  Tensor<Scalar> out = Tensor<Scalar>::empty({c, h, w});
  Scalar* dst = out.data();
  const stbi_uc* src = pixels.get();
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x)
      for (Index k = 0; k < c; ++k)
        dst[(k * h + y) * w + x] = Scalar(src[(y * w + x) * c + k]) / Scalar(255);
  return out;
}

/// Loads the PNG, JPEG or BMP file at `path` as a (n_channels, H, W) tensor in [0, 1]; see
/// decode_image.
///
///     auto rgb = hgad::load_image<float>(path);        // (3, H, W)
///     auto gray = hgad::load_image<float>(path, 1);    // (1, H, W)
template <class Scalar = float>
Tensor<Scalar> load_image(const std::string& path, int n_channels = 3,
                          std::int64_t max_pixels = default_max_image_pixels) {
  const std::vector<std::uint8_t> bytes = detail::io::read_file_bytes(path, "image");
  return decode_image<Scalar>(bytes.data(), bytes.size(), path, n_channels, max_pixels);
}

/// Bilinear resampling of the last two axes to (out_h, out_w) with PyTorch's
/// `F.interpolate(mode='bilinear', antialias=False)` semantics.
///
/// Per axis, output index o reads source coordinate s = o (in - 1) / (out - 1) with align_corners
/// (s = 0 when out = 1), else s = max(0, (o + 1/2) in / out - 1/2); then i0 = floor(s), i1 = min(i0
/// + 1, in - 1), w = s - i0 and out = (1 - w) x[i0] + w x[i1], applied along H and W. HGAD's image
/// pyramid and score upsampling use align_corners = true (docs/algorithm.md §1.2, §5); no antialiasing,
/// so a large downscale aliases exactly as PyTorch does.
template <class Scalar>
Tensor<Scalar> resize_bilinear(const Tensor<Scalar>& x, Index out_h, Index out_w,
                               bool align_corners) {
  const detail::image::Planes p = detail::image::planes_of(x, "resize_bilinear");
  detail::image::check_output_size(out_h, out_w, "resize_bilinear");
  detail::image::check_nonempty_input<Scalar>(p, "resize_bilinear");
  const auto rows = detail::image::linear_taps<Scalar>(p.height, out_h, align_corners);
  const auto cols = detail::image::linear_taps<Scalar>(p.width, out_w, align_corners);
  Tensor<Scalar> out =
      Tensor<Scalar>::empty(detail::image::with_plane_size<Scalar>(x.shape(), out_h, out_w));
  const Scalar* in = x.data();
  Scalar* dst = out.data();
  detail::parallel_for(p.n_planes, p.n_planes * out_h * out_w * 8, [&](Index plane) {
    const Scalar* src = in + plane * p.height * p.width;
    Scalar* plane_out = dst + plane * out_h * out_w;
    for (Index y = 0; y < out_h; ++y) {
      const auto& r = rows[static_cast<std::size_t>(y)];
      const Scalar* top = src + r.i0 * p.width;
      const Scalar* bottom = src + r.i1 * p.width;
      for (Index xo = 0; xo < out_w; ++xo) {
        const auto& c = cols[static_cast<std::size_t>(xo)];
        plane_out[y * out_w + xo] =
            (Scalar(1) - r.w1) * ((Scalar(1) - c.w1) * top[c.i0] + c.w1 * top[c.i1]) +
            r.w1 * ((Scalar(1) - c.w1) * bottom[c.i0] + c.w1 * bottom[c.i1]);
      }
    }
  });
  return out;
}

/// Antialiased bilinear resampling of the last two axes with Pillow's `Image.resize(size,
/// BILINEAR)` filter (and torchvision's `resize(antialias=True)`, which reproduces it): a triangle
/// filter whose support widens by in / out when downscaling, so every input pixel contributes (see
/// detail::image::antialias_taps); when upscaling it is plain bilinear with half-pixel centres and
/// edge weights renormalised. Computed in double from float input, so it agrees with Pillow's 8-bit
/// fixed-point result to about one grey level (Pillow rounds to 8 bits between its two passes).
/// This is the BASELINES.md protocol's "PIL bilinear resize to 256x256".
template <class Scalar>
Tensor<Scalar> resize_bilinear_antialias(const Tensor<Scalar>& x, Index out_h, Index out_w) {
  const detail::image::Planes p = detail::image::planes_of(x, "resize_bilinear_antialias");
  detail::image::check_output_size(out_h, out_w, "resize_bilinear_antialias");
  detail::image::check_nonempty_input<Scalar>(p, "resize_bilinear_antialias");
  return detail::image::separable_resize(
      x, out_h, out_w, detail::image::antialias_taps(p.height, out_h),
      detail::image::antialias_taps(p.width, out_w), "resize_bilinear_antialias");
}

/// Area resampling of the last two axes: PyTorch's `F.interpolate(mode='area')`, i.e.
/// `adaptive_avg_pool2d`; output o averages the inputs [floor(o in / out), ceil((o + 1) in / out)).
/// For integer factors this is the exact box average.
template <class Scalar>
Tensor<Scalar> resize_area(const Tensor<Scalar>& x, Index out_h, Index out_w) {
  const detail::image::Planes p = detail::image::planes_of(x, "resize_area");
  detail::image::check_output_size(out_h, out_w, "resize_area");
  detail::image::check_nonempty_input<Scalar>(p, "resize_area");
  return detail::image::separable_resize(x, out_h, out_w, detail::image::area_taps(p.height, out_h),
                                         detail::image::area_taps(p.width, out_w), "resize_area");
}

/// Nearest-neighbour resampling of the last two axes (for masks).
///
/// half_pixel = true: source index floor((o + 1/2) in / out), as Pillow's NEAREST (which
/// torchvision uses for PIL masks, docs/algorithm.md §1.1) and PyTorch's 'nearest-exact'. half_pixel =
/// false: floor(o in / out), PyTorch's legacy 'nearest'. Both computed in exact integer arithmetic.
template <class Scalar>
Tensor<Scalar> resize_nearest(const Tensor<Scalar>& x, Index out_h, Index out_w,
                              bool half_pixel = true) {
  const detail::image::Planes p = detail::image::planes_of(x, "resize_nearest");
  detail::image::check_output_size(out_h, out_w, "resize_nearest");
  detail::image::check_nonempty_input<Scalar>(p, "resize_nearest");
  const auto source = [half_pixel](Index o, Index n_in, Index n_out) {
    const Index s = half_pixel ? ((2 * o + 1) * n_in) / (2 * n_out) : (o * n_in) / n_out;
    return std::min(s, n_in - 1);
  };
  std::vector<Index> rows(static_cast<std::size_t>(out_h)), cols(static_cast<std::size_t>(out_w));
  for (Index y = 0; y < out_h; ++y) rows[static_cast<std::size_t>(y)] = source(y, p.height, out_h);
  for (Index xo = 0; xo < out_w; ++xo)
    cols[static_cast<std::size_t>(xo)] = source(xo, p.width, out_w);
  Tensor<Scalar> out =
      Tensor<Scalar>::empty(detail::image::with_plane_size<Scalar>(x.shape(), out_h, out_w));
  const Scalar* in = x.data();
  Scalar* dst = out.data();
  detail::parallel_for(p.n_planes, p.n_planes * out_h * out_w, [&](Index plane) {
    const Scalar* src = in + plane * p.height * p.width;
    Scalar* plane_out = dst + plane * out_h * out_w;
    for (Index y = 0; y < out_h; ++y)
      for (Index xo = 0; xo < out_w; ++xo)
        plane_out[y * out_w + xo] =
            src[rows[static_cast<std::size_t>(y)] * p.width + cols[static_cast<std::size_t>(xo)]];
  });
  return out;
}

/// Resampling of the last two axes with the chosen filter; align_corners applies to bilinear only.
template <class Scalar>
Tensor<Scalar> resize(const Tensor<Scalar>& x, Index out_h, Index out_w, Interpolation filter,
                      bool align_corners = false) {
  switch (filter) {
    case Interpolation::nearest:
      return resize_nearest(x, out_h, out_w);
    case Interpolation::bilinear:
      return resize_bilinear(x, out_h, out_w, align_corners);
    case Interpolation::bilinear_antialias:
      return resize_bilinear_antialias(x, out_h, out_w);
    case Interpolation::area:
      return resize_area(x, out_h, out_w);
  }
  throw Error("resize: unknown interpolation");
}

/// The output size of torchvision's `Resize(size)` with an int: the shorter side becomes `size`,
/// the longer one int(size * longer / shorter) (truncated), the aspect ratio kept. Returns (H, W).
inline std::array<Index, 2> shorter_side_size(Index height, Index width, Index size) {
  check(height > 0 && width > 0 && size > 0, "shorter_side_size: sizes must be positive, got ",
        height, "x", width, " -> ", size);
  if (height <= width) return {size, (size * width) / height};
  return {(size * height) / width, size};
}

/// Resizes the last two axes so that the shorter side is `size` (torchvision `Resize(int)`).
template <class Scalar>
Tensor<Scalar> resize_shorter_side(const Tensor<Scalar>& x, Index size, Interpolation filter) {
  const detail::image::Planes p = detail::image::planes_of(x, "resize_shorter_side");
  const auto hw = shorter_side_size(p.height, p.width, size);
  return resize(x, hw[0], hw[1], filter);
}

/// The window rows [top, top + height) and columns [left, left + width) of the last two axes.
template <class Scalar>
Tensor<Scalar> crop(const Tensor<Scalar>& x, Index top, Index left, Index height, Index width) {
  const detail::image::Planes p = detail::image::planes_of(x, "crop");
  check(top >= 0 && left >= 0 && height >= 0 && width >= 0 && top + height <= p.height &&
            left + width <= p.width,
        "crop: window top=", top, " left=", left, " ", height, "x", width,
        " does not fit an image of ", p.height, "x", p.width);
  Tensor<Scalar> out =
      Tensor<Scalar>::empty(detail::image::with_plane_size<Scalar>(x.shape(), height, width));
  const Scalar* in = x.data();
  Scalar* dst = out.data();
  for (Index plane = 0; plane < p.n_planes; ++plane)
    for (Index y = 0; y < height; ++y)
      std::copy_n(in + (plane * p.height + top + y) * p.width + left, width,
                  dst + (plane * height + y) * width);
  return out;
}

/// torchvision's `CenterCrop((height, width))`: top = round((H - height) / 2), left = round((W -
/// width) / 2) with Python's round-half-to-even. requires: height <= H and width <= W (torchvision
/// would pad; this throws).
template <class Scalar>
Tensor<Scalar> center_crop(const Tensor<Scalar>& x, Index height, Index width) {
  const detail::image::Planes p = detail::image::planes_of(x, "center_crop");
  check(height > 0 && width > 0 && height <= p.height && width <= p.width, "center_crop: ", height,
        "x", width, " does not fit an image of ", p.height, "x", p.width);
  return crop(x, detail::image::half_round_even(p.height - height),
              detail::image::half_round_even(p.width - width), height, width);
}

/// Per-channel normalisation (x - mean[c]) / std[c] of a (C, H, W) or (N, C, H, W) tensor.
/// requires: mean and stddev have C entries, every stddev > 0.
template <class Scalar>
Tensor<Scalar> normalize(const Tensor<Scalar>& x, const std::vector<double>& mean,
                         const std::vector<double>& stddev) {
  const detail::image::Planes p = detail::image::planes_of(x, "normalize");
  check(x.rank() == 3 || x.rank() == 4, "normalize: expected (C, H, W) or (N, C, H, W), got ",
        x.shape());
  const Index c = x.dim(x.rank() - 3);
  check(static_cast<Index>(mean.size()) == c && static_cast<Index>(stddev.size()) == c,
        "normalize: ", mean.size(), " means and ", stddev.size(), " standard deviations for ", c,
        " channels");
  for (double s : stddev) check(s > 0, "normalize: standard deviation ", s, " must be positive");
  Tensor<Scalar> out = Tensor<Scalar>::empty(x.shape());
  const Index plane_size = p.height * p.width;
  for (Index plane = 0; plane < p.n_planes; ++plane) {
    const auto k = static_cast<std::size_t>(plane % c);
    const Scalar m = Scalar(mean[k]), s = Scalar(stddev[k]);
    const Scalar* src = x.data() + plane * plane_size;
    Scalar* dst = out.data() + plane * plane_size;
    for (Index i = 0; i < plane_size; ++i) dst[i] = (src[i] - m) / s;
  }
  return out;
}

/// ImageNet normalisation (x - imagenet_mean) / imagenet_std of an RGB (3, H, W) or (N, 3, H, W)
/// tensor.
template <class Scalar>
Tensor<Scalar> normalize_imagenet(const Tensor<Scalar>& x) {
  return normalize(x, {imagenet_mean.begin(), imagenet_mean.end()},
                   {imagenet_std.begin(), imagenet_std.end()});
}

/// The bytes of an 8-bit PNG of `image`: (H, W) or (1, H, W) gray, (3, H, W) RGB, values in [0, 1]
/// clamped and stored as round(255 v); NaN is stored as 0.
template <class Scalar>
std::vector<std::uint8_t> encode_png(const Tensor<Scalar>& image) {
  const Tensor<Scalar> x = image.cpu();
  check(x.rank() == 2 || (x.rank() == 3 && (x.dim(0) == 1 || x.dim(0) == 3)),
        "encode_png: expected (H, W), (1, H, W) or (3, H, W), got ", x.shape());
  const Index c = x.rank() == 2 ? 1 : x.dim(0);
  const Index h = x.dim(x.rank() - 2), w = x.dim(x.rank() - 1);
  check(h > 0 && w > 0 && h <= (1 << 24) && w <= (1 << 24) &&
            h * w * c <= std::numeric_limits<int>::max(),
        "encode_png: cannot encode an image of ", h, "x", w);
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(c * h * w));
  const Scalar* src = x.data();
  for (Index k = 0; k < c; ++k)
    for (Index i = 0; i < h * w; ++i) {
      const Scalar v = src[k * h * w + i];
      const double clamped = v > Scalar(0) ? (v < Scalar(1) ? double(v) : 1.0) : 0.0;
      pixels[static_cast<std::size_t>(i * c + k)] =
          static_cast<std::uint8_t>(std::floor(clamped * 255.0 + 0.5));
    }
  std::vector<std::uint8_t> out;
  const int ok = stbi_write_png_to_func(detail::image::append_bytes, &out, static_cast<int>(w),
                                        static_cast<int>(h), static_cast<int>(c), pixels.data(),
                                        static_cast<int>(w * c));
  check(ok != 0, "encode_png: stb_image_write failed on an image of ", h, "x", w);
  return out;
}

/// Writes `image` to `path` as an 8-bit PNG (see encode_png), through a temporary file renamed into
/// place, so that readers never see a partial file.
template <class Scalar>
void save_png(const std::string& path, const Tensor<Scalar>& image) {
  detail::io::write_bytes_atomically(path, "save_png", encode_png(image));
}

/// A jet-coloured (3, H, W) picture of a (H, W) or (1, H, W) heat map: t = (v - lo) / (hi - lo)
/// clamped to [0, 1] (t = 0 for NaN or when hi <= lo) through matplotlib's 'jet' segments (blue,
/// cyan, yellow, red), interpolated continuously rather than through a 256-entry table.
template <class Scalar>
Tensor<Scalar> colormap_jet(const Tensor<Scalar>& heat, Scalar lo, Scalar hi) {
  const Tensor<Scalar> x = heat.cpu();
  check(x.rank() == 2 || (x.rank() == 3 && x.dim(0) == 1),
        "colormap_jet: expected (H, W) or (1, H, W), got ", x.shape());
  const Index h = x.dim(x.rank() - 2), w = x.dim(x.rank() - 1);
  Tensor<Scalar> out = Tensor<Scalar>::empty({3, h, w});
  const double range = double(hi) - double(lo);
  for (Index i = 0; i < h * w; ++i) {
    const double v = double(x.data()[i]);
    double t = range > 0 ? (v - double(lo)) / range : 0.0;
    t = t > 0 ? (t < 1 ? t : 1.0) : 0.0;  // NaN compares false and maps to 0
    const auto rgb = detail::image::jet(t);
    for (Index k = 0; k < 3; ++k)
      out.data()[k * h * w + i] = Scalar(rgb[static_cast<std::size_t>(k)]);
  }
  return out;
}

/// colormap_jet with lo and hi the minimum and maximum of the finite values of `heat`.
template <class Scalar>
Tensor<Scalar> colormap_jet(const Tensor<Scalar>& heat) {
  const std::vector<Scalar> values = heat.to_vector();
  Scalar lo = std::numeric_limits<Scalar>::infinity(),
         hi = -std::numeric_limits<Scalar>::infinity();
  for (Scalar v : values)
    if (std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  if (!(lo <= hi)) lo = hi = Scalar(0);
  return colormap_jet(heat, lo, hi);
}

/// Alpha blend (1 - alpha) base + alpha overlay of two images of the same H and W, with a
/// one-channel base replicated to 3 channels: base (1|3, H, W), overlay (3, H, W) -> (3, H, W).
/// requires: 0 <= alpha <= 1.
template <class Scalar>
Tensor<Scalar> blend(const Tensor<Scalar>& base, const Tensor<Scalar>& overlay, Scalar alpha) {
  const Tensor<Scalar> a = base.cpu(), b = overlay.cpu();
  check(a.rank() == 3 && (a.dim(0) == 1 || a.dim(0) == 3) && b.rank() == 3 && b.dim(0) == 3 &&
            a.dim(1) == b.dim(1) && a.dim(2) == b.dim(2),
        "blend: expected base (1|3, H, W) and overlay (3, H, W) of one size, got ",
        a.shape(), " and ", b.shape());
  check(alpha >= Scalar(0) && alpha <= Scalar(1), "blend: alpha ", alpha, " outside [0, 1]");
  const Index plane = a.dim(1) * a.dim(2);
  Tensor<Scalar> out = Tensor<Scalar>::empty(b.shape());
  for (Index k = 0; k < 3; ++k) {
    const Scalar* src = a.data() + (a.dim(0) == 1 ? 0 : k) * plane;
    for (Index i = 0; i < plane; ++i)
      out.data()[k * plane + i] = (Scalar(1) - alpha) * src[i] + alpha * b.data()[k * plane + i];
  }
  return out;
}

}  // namespace hgad
