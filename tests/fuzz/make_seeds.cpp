// Writes the seed corpora of the fuzz targets into <dir>/{npy,image,mvtec,checkpoint,config}: small
// valid files made here by hgad's own writers and stb_image_write, never copied data.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <hgad/io/image.hpp>
#include <hgad/io/npy.hpp>
#include <hgad/model/hgad_model.hpp>
#include <iostream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

void write(const fs::path& path, const Bytes& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// The same array with a version 2.0 or 3.0 prefix (4-byte header length).
Bytes to_version(const Bytes& v1, int major) {
  const std::size_t header_length = v1[8] | (v1[9] << 8);
  Bytes out(v1.begin(), v1.begin() + 6);
  out.push_back(static_cast<std::uint8_t>(major));
  out.push_back(0);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(header_length >> (8 * i)));
  out.insert(out.end(), v1.begin() + 10, v1.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_seeds <dir>\n";
    return 2;
  }
  const fs::path dir = argv[1];
  hgad::Rng rng(1);
  int n = 0;
  for (const hgad::Shape& shape : {hgad::Shape{}, hgad::Shape{3}, hgad::Shape{2, 3},
                                   hgad::Shape{2, 1, 2}, hgad::Shape{1, 2, 1, 2}}) {
    const Bytes f4 = hgad::encode_npy(hgad::Tensor<float>::randn(shape, rng));
    const Bytes f8 = hgad::encode_npy(hgad::Tensor<double>::randn(shape, rng));
    for (const Bytes& b : {f4, f8}) {
      write(dir / "npy" / ("v1_" + std::to_string(n++) + ".npy"), b);
      write(dir / "npy" / ("v2_" + std::to_string(n++) + ".npy"), to_version(b, 2));
      write(dir / "npy" / ("v3_" + std::to_string(n++) + ".npy"), to_version(b, 3));
    }
  }
  write(dir / "npy/i8.npy", hgad::encode_npy_int64({0, 1, 2, -5}));

  n = 0;
  for (int channels = 1; channels <= 4; ++channels) {
    const int width = 3 + channels, height = 4;
    std::vector<std::uint8_t> pixels(static_cast<std::size_t>(width * height * channels));
    for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<std::uint8_t>(i * 37);
    Bytes png, bmp, jpg;
    stbi_write_png_to_func(hgad::detail::image::append_bytes, &png, width, height, channels,
                           pixels.data(), width * channels);
    stbi_write_bmp_to_func(hgad::detail::image::append_bytes, &bmp, width, height, channels,
                           pixels.data());
    stbi_write_jpg_to_func(hgad::detail::image::append_bytes, &jpg, width, height, channels,
                           pixels.data(), 90);
    write(dir / "image" / ("c" + std::to_string(channels) + ".png"), png);
    write(dir / "image" / ("c" + std::to_string(channels) + ".bmp"), bmp);
    write(dir / "image" / ("c" + std::to_string(channels) + ".jpg"), jpg);
    // The same PNG with an empty IDAT chunk before the real one (stb_image skips chunk CRCs).
    const std::size_t idat =
        8 + 25;  // signature, then the 25-byte IHDR chunk that stb writes first
    const Bytes empty_idat = {0, 0, 0, 0, 'I', 'D', 'A', 'T', 0, 0, 0, 0};
    Bytes split = png;
    split.insert(split.begin() + static_cast<std::ptrdiff_t>(idat), empty_idat.begin(),
                 empty_idat.end());
    write(dir / "image" / ("c" + std::to_string(channels) + "_empty_idat.png"), split);
  }

  for (int s = 0; s < 6; ++s) {
    Bytes b(256);
    for (std::size_t i = 0; i < b.size(); ++i)
      b[i] = static_cast<std::uint8_t>((i * (2 * s + 1) + 17 * s) & 0xff);
    write(dir / "mvtec" / ("pattern" + std::to_string(s)), b);
  }
  write(dir / "mvtec/zeros", Bytes(128, 0));
  write(dir / "mvtec/ones", Bytes(512, 0xff));

  // Checkpoints (their payloads: fuzz_checkpoint adds the header) and configs of small models: HGAD
  // and NF, with and without positional encoding, untrained and calibrated.
  n = 0;
  for (const auto objective : {hgad::Objective::hgad, hgad::Objective::nf}) {
    for (const hgad::Index pos_dim : {hgad::Index(0), hgad::Index(4)}) {
      hgad::ModelConfig c;
      c.objective = objective;
      c.levels = {{4, 2, 2}, {6, 1, 1}};
      c.class_names = {"a", "b"};
      c.features.backbone = "none";
      c.features.mask_size = 4;
      c.pos_dim = pos_dim;
      c.n_blocks = 1;
      c.n_centers = 2;
      c.meta_epochs = 1;
      c.batch_size = 2;
      hgad::HgadModel<float> model(c);
      const auto untrained = model.to_checkpoint().serialize();
      write(dir / "checkpoint" / ("model" + std::to_string(n++)), Bytes(untrained.begin() + 24, untrained.end()));
      hgad::Rng data_rng(5);
      const std::vector<hgad::Tensor<float>> features = {hgad::Tensor<float>::randn({4, 2, 2, 4}, data_rng),
                                                         hgad::Tensor<float>::randn({4, 1, 1, 6}, data_rng)};
      model.calibrate(features, {0, 1, 0, 1});
      const auto calibrated = model.to_checkpoint().serialize();
      write(dir / "checkpoint" / ("model" + std::to_string(n++)), Bytes(calibrated.begin() + 24, calibrated.end()));
      const std::string text = c.to_text();
      write(dir / "config" / ("config" + std::to_string(n)), Bytes(text.begin(), text.end()));
    }
  }
  const std::string demo =
      "# a comment\nimage_size = 256\nlayers = layer2, layer3\npos_dim = 64\nn_blocks = 4\nlr = 0.0005\n"
      "classes = a, b, c\nlevels = 128x32x32, 256x16x16\nobjective = nf\nclamp_variant = head\n";
  write(dir / "config/demo", Bytes(demo.begin(), demo.end()));
  return 0;
}
