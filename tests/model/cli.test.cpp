// The hgad command-line program on bad and good input. The program's path comes from the HGAD_CLI
// environment variable, which the ctest entry cli.bad_input (apps/CMakeLists.txt) sets; without it
// these cases skip.

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <hgad/detail/text.hpp>
#include <hgad/flow/whitening.hpp>
#include <hgad/io/image.hpp>
#include <hgad/io/npy.hpp>
#include <hgad/metrics.hpp>
#include <hgad/model/config.hpp>
#include <hgad/model/hgad_model.hpp>
#include <hgad/model/pipeline.hpp>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../../apps/cli_support.hpp"
#include "io/temp_dir.hpp"

namespace cli_test {

namespace {

namespace fs = std::filesystem;

struct Run {
  int status = -1;
  std::string out;
  std::string err;
};

std::string cli_path() {
  const char* path = std::getenv("HGAD_CLI");
  return path ? path : "";
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Runs `hgad <arguments>` with stdout and stderr captured in files of `dir`; `launcher` (for
/// example "cd DIR &&" or "timeout 20") goes before the program.
Run run(const hgad_test::TempDir& dir, const std::string& arguments,
        const std::string& launcher = "") {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string command =
      launcher + " '" + cli_path() + "' " + arguments + " >'" + out + "' 2>'" + err + "'";
  const int raw = std::system(command.c_str());
  Run r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string weights_dir() { return std::string(HGAD_SHARED_DIR) + "/weights/resnet18-imagenet"; }

/// A gray 64x64 PNG with a bright square when `defect`.
void write_image(const std::string& path, unsigned seed, bool defect) {
  fs::create_directories(fs::path(path).parent_path());
  hgad::Tensor<float> image({64, 64});
  for (hgad::Index i = 0; i < 64; ++i)
    for (hgad::Index j = 0; j < 64; ++j)
      image(i, j) = float(0.4 + 0.2 * ((i / 8 + j / 8 + seed) % 2)) +
                    (defect && i > 20 && i < 30 && j > 20 && j < 30 ? 0.4f : 0.0f);
  hgad::save_png(path, image);
}

void write_mask(const std::string& path) {
  fs::create_directories(fs::path(path).parent_path());
  hgad::Tensor<float> mask({64, 64});
  for (hgad::Index i = 21; i < 30; ++i)
    for (hgad::Index j = 21; j < 30; ++j) mask(i, j) = 1.0f;
  hgad::save_png(path, mask);
}

/// Two classes a and b: 4 training images each, 2 good and 2 defective test images with masks.
void write_dataset(const fs::path& root) {
  for (const std::string c : {"a", "b"}) {
    for (unsigned i = 0; i < 4; ++i)
      write_image((root / c / "train/good" / ("t" + std::to_string(i) + ".png")).string(), i,
                  false);
    for (unsigned i = 0; i < 2; ++i) {
      write_image((root / c / "test/good" / ("g" + std::to_string(i) + ".png")).string(), i, false);
      write_image((root / c / "test/dent" / ("d" + std::to_string(i) + ".png")).string(), i, true);
      write_mask(
          (root / c / "ground_truth/dent" / ("d" + std::to_string(i) + "_mask.png")).string());
    }
  }
}

/// A small, fast configuration: 64x64 images, layer2 only (128 x 8 x 8), one block, two epochs.
const char* const tiny_config =
    "image_size = 64\nmask_size = 32\nlayers = layer2\npos_dim = 8\nn_blocks = 1\nn_centers = 2\n"
    "meta_epochs = 2\nsub_epochs = 1\nwarmup_meta_epochs = 1\nstage1_meta_epochs = 1\nbatch_size = "
    "4\n";

/// Embeddings of classes a and b in the layout hgad embeddings reads: 4 rows of 3 features each,
/// two training normals, one normal and one anomalous test row; b's row 1 holds a NaN when
/// `with_nan`.
void write_embeddings(const hgad_test::TempDir& dir, bool with_nan) {
  std::string csv = "class,class_index,row,y,split\n";
  for (const std::string c : {"a", "b"}) {
    hgad::Tensor<float> x({4, 3});
    for (hgad::Index i = 0; i < x.numel(); ++i) x.data()[i] = float(i % 5);
    if (c == "b" && with_nan) x(1, 2) = std::numeric_limits<float>::quiet_NaN();
    hgad::save_npy(dir.file(c + "_X.npy"), x);
    hgad::save_npy_int64(dir.file(c + "_y.npy"), {0, 0, 0, 1});
    const std::string index = c == "a" ? "0" : "1";
    csv += c + "," + index + ",0,0,train\n" + c + "," + index + ",1,0,train\n" + c + "," + index +
           ",2,0,test\n" + c + "," + index + ",3,1,test\n";
  }
  std::ofstream(dir.file("unified_split_seed0.csv")) << csv;
}

#define REQUIRE_CLI()                                       \
  do {                                                      \
    if (cli_path().empty()) {                               \
      WARN("skipped: HGAD_CLI is not set (ctest sets it)"); \
      return;                                               \
    }                                                       \
  } while (0)

#define REQUIRE_WEIGHTS()                                 \
  do {                                                    \
    if (!fs::exists(weights_dir())) {                     \
      WARN("skipped: " << weights_dir() << " is absent"); \
      return;                                             \
    }                                                     \
  } while (0)

}  // namespace

TEST_CASE("hgad program answers --help on every command and rejects bad command lines",
          "[model][cli]") {
  REQUIRE_CLI();
  hgad_test::TempDir dir("cli_usage");
  Run r = run(dir, "");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "usage: hgad <command>"));
  CHECK(run(dir, "--help").status == 0);
  r = run(dir, "frobnicate");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "unknown command 'frobnicate'"));
  for (const std::string command : {"train", "test", "calibrate", "predict", "info", "embeddings"}) {
    r = run(dir, command + " --help");
    CHECK(r.status == 0);
    CHECK(contains(r.out, "usage: hgad " + command));
  }
  r = run(dir, "train --data x --backbone y");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "missing required option --out"));
  r = run(dir, "train --data x --backbone y --out m --colour red");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "unknown option '--colour'"));
  r = run(dir, "train --data x --backbone y --out m --epochs many");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "--epochs must be an integer, got 'many'"));
  std::ofstream(dir.file("paper_start.cfg")) << "init = identity\n";
  r = run(dir, "train --data x --backbone y --out m --epochs 0 --config '" +
                   dir.file("paper_start.cfg") + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "--epochs 0 takes the data-dependent start of init = whiten, untrained"));
  r = run(dir, "train --data x --backbone y --out m --objective cflow");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "hgad or nf"));
  r = run(dir, "train --data x --data y --backbone y --out m");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "given twice"));
  r = run(dir, "test --model m --data d --mode best");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "transductive, calibrated or label-free"));
  r = run(dir, "predict --model m --out o");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "no IMAGE"));
  r = run(dir, "info");
  CHECK(r.status == 2);
  r = run(dir, "train --out");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "needs a value"));
}

TEST_CASE("hgad program reports missing paths and bad files with one message and no output",
          "[model][cli]") {
  REQUIRE_CLI();
  hgad_test::TempDir dir("cli_paths");
  const std::string model = dir.file("model.hgad");
  Run r = run(dir, "train --data '" + dir.file("nowhere") + "' --backbone '" + dir.path().string() +
                       "' --out '" + model + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "is not a directory"));
  CHECK_FALSE(fs::exists(model));

  r = run(dir,
          "test --model '" + dir.file("missing.hgad") + "' --data '" + dir.path().string() + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "does not exist"));

  std::ofstream(dir.file("garbage.hgad")) << "not a model";
  r = run(dir, "info '" + dir.file("garbage.hgad") + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "wrong magic"));

  const std::string out = dir.file("heatmaps");
  r = run(dir, "predict --model '" + dir.file("garbage.hgad") + "' --out '" + out + "' '" +
                   dir.file("no.png") + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "no.png"));
  CHECK_FALSE(fs::exists(out));

  r = run(dir, "embeddings --data '" + dir.path().string() + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "unified_split_seed0.csv"));

  // A dataset whose class folder holds no training image.
  fs::create_directories(dir.path() / "data/a/train/good");
  if (fs::exists(weights_dir())) {
    r = run(dir, "train --data '" + dir.file("data") + "' --backbone '" + weights_dir() +
                     "' --out '" + model + "'");
    CHECK(r.status == 1);
    CHECK(contains(r.err, "good"));
    CHECK_FALSE(fs::exists(model));
  }
}

TEST_CASE("hgad program trains, tests, predicts and refuses a model of other feature dimensions",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_run");
  write_dataset(dir.path() / "data");
  std::ofstream(dir.file("tiny.cfg")) << tiny_config;
  const std::string data = dir.file("data"), model = dir.file("model.hgad");
  Run r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                       model + "' --config '" + dir.file("tiny.cfg") + "' --threads 2");
  INFO(r.err);
  REQUIRE(r.status == 0);
  REQUIRE(fs::exists(model));
  CHECK(contains(r.err, "training"));

  r = run(dir, "info '" + model + "'");
  CHECK(r.status == 0);
  CHECK(contains(r.out, "levels = 128x8x8"));
  CHECK(contains(r.out, "classes = a, b"));
  CHECK(contains(r.out, "calibrated"));

  for (const std::string mode : {"transductive", "calibrated", "label-free"}) {
    const std::string json = dir.file("metrics_" + mode + ".json");
    r = run(dir, "test --model '" + model + "' --data '" + data + "' --mode " + mode + " --json '" +
                     json + "'");
    INFO(r.err);
    CHECK(r.status == 0);
    CHECK(contains(r.out, "mean"));
    const std::string text = slurp(json);
    CHECK(contains(text, "\"mode\": \"" + mode + "\""));
    CHECK(contains(text, "\"image_auroc\""));
    CHECK(contains(text, "\"aupro\""));
    CHECK(contains(text, "\"config\""));
    CHECK(contains(text, "\"version\": \""));
    CHECK((!text.empty() && text.back() == '\n'));
    CHECK_FALSE(contains(text, "-0,"));
    CHECK_FALSE(contains(text, "-0\n"));
    if (mode == "label-free") CHECK(contains(r.out, "cls-acc"));
  }

  const std::string out = dir.file("heat");
  r = run(dir, "predict --model '" + model + "' --out '" + out + "' '" + data +
                   "/a/test/dent/d0.png' '" + data + "/b/test/good/g0.png'");
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK(fs::exists(fs::path(out) / "d0_heatmap.png"));
  CHECK(fs::exists(fs::path(out) / "g0_heatmap.png"));
  CHECK(contains(slurp((fs::path(out) / "scores.csv").string()), "d0.png"));

  // A model that expects 64 channels where the backbone gives 128.
  hgad::HgadModel<float> trained = hgad::HgadModel<float>::load(model);
  hgad::ModelConfig wrong = trained.config();
  wrong.levels[0].dim = 64;
  hgad::HgadModel<float> other(wrong);
  other.set_metadata("backbone_dir", weights_dir());
  other.save(dir.file("other.hgad"));
  const std::string json = dir.file("never.json");
  r = run(dir, "test --model '" + dir.file("other.hgad") + "' --data '" + data +
                   "' --mode transductive --json '" + json + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "other features"));
  CHECK(contains(r.err, "128 channels"));
  CHECK_FALSE(fs::exists(json));

  r = run(dir, "test --model '" + model + "' --data '" + data + "' --classes a,zebra");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "zebra"));

  // Damaged model files: truncated, a flipped payload byte (CRC), a newer format version.
  const auto bytes = hgad_test::read_bytes(model);
  REQUIRE(bytes.size() > 100);
  auto damaged = [&](const std::string& name, std::vector<unsigned char> b) {
    hgad_test::write_bytes(dir.file(name), b);
    const std::string never = dir.file(name + ".json");
    Run d = run(dir, "test --model '" + dir.file(name) + "' --data '" + data + "' --json '" + never + "'");
    CHECK(d.status == 1);
    CHECK(contains(d.err, name));
    CHECK_FALSE(fs::exists(never));
    return d.err;
  };
  CHECK(contains(damaged("truncated.hgad", std::vector<unsigned char>(bytes.begin(), bytes.end() - 50)),
                 "truncated"));
  auto flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x40;
  CHECK(contains(damaged("flipped.hgad", flipped), "CRC32"));
  auto newer = bytes;
  newer[8] = 99;  // the little-endian format version follows the 8 magic bytes
  CHECK(contains(damaged("newer.hgad", newer), "format version 99"));

  // A failed training leaves an existing model untouched.
  const std::string empty_data = dir.file("empty_data");
  fs::create_directories(fs::path(empty_data) / "a/train/good");
  r = run(dir, "train --data '" + empty_data + "' --backbone '" + weights_dir() + "' --out '" + model + "'");
  CHECK(r.status == 1);
  CHECK(hgad_test::read_bytes(model) == bytes);

  // Damaged test data: a truncated image, then a mask of the wrong size; each named, no output.
  const fs::path image = fs::path(data) / "a/test/dent/d1.png";
  const auto image_bytes = hgad_test::read_bytes(image.string());
  hgad_test::write_bytes(image.string(), std::vector<unsigned char>(image_bytes.begin(), image_bytes.begin() + 60));
  const std::string never = dir.file("never2.json");
  r = run(dir, "test --model '" + model + "' --data '" + data + "' --json '" + never + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "d1.png"));
  CHECK_FALSE(fs::exists(never));
  hgad_test::write_bytes(image.string(), image_bytes);
  const fs::path mask = fs::path(data) / "b/ground_truth/dent/d0_mask.png";
  hgad::save_png(mask.string(), hgad::Tensor<float>({16, 16}));
  r = run(dir, "test --model '" + model + "' --data '" + data + "' --json '" + never + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "d0_mask.png"));
  CHECK_FALSE(fs::exists(never));
}

TEST_CASE("hgad program trains a class group as one class and reports its folders one by one",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_group");
  write_dataset(dir.path() / "data");
  fs::copy(dir.path() / "data/a", dir.path() / "data/c", fs::copy_options::recursive);
  std::ofstream(dir.file("group.cfg")) << tiny_config << "group.ab = a, b\n";
  const std::string data = dir.file("data"), model = dir.file("model.hgad");
  Run r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                       model + "' --config '" + dir.file("group.cfg") + "' --threads 2");
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "2 classes"));

  r = run(dir, "info '" + model + "'");
  CHECK(contains(r.out, "classes = ab, c\n"));
  CHECK(contains(r.out, "group.ab = a, b\n"));

  r = run(dir, "test --model '" + model + "' --data '" + data + "' --mode label-free");
  INFO(r.err);
  CHECK(r.status == 0);
  std::istringstream table(r.out);
  std::vector<std::string> rows;
  for (std::string line; std::getline(table, line);) rows.push_back(line.substr(0, line.find(' ')));
  CHECK(rows == std::vector<std::string>{"mode", "class", "a", "b", "c", "mean"});
  CHECK(contains(r.out, "cls-acc"));

  r = run(dir, "test --model '" + model + "' --data '" + data + "' --classes b");
  CHECK(r.status == 0);
  CHECK(contains(r.out, "\nb "));
  CHECK_FALSE(contains(r.out, "\na "));

  r = run(dir, "predict --model '" + model + "' --class a --out '" + dir.file("heat") + "' '" +
                   data + "/a/test/dent/d0.png'");
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK(contains(r.out, "\tab\t"));

  // A group naming a folder that is not there: one message, no model.
  std::ofstream(dir.file("bad.cfg")) << tiny_config << "group.ab = a, d\n";
  const std::string never = dir.file("never.hgad");
  r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" + never +
                   "' --config '" + dir.file("bad.cfg") + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "group.ab = d"));
  CHECK_FALSE(fs::exists(never));
}

TEST_CASE(
    "hgad train --auto-group trains with the classes a first model confuses (with init = whiten, "
    "the untrained start)",
    "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  // Folders a and b hold the same images; stripes holds bright vertical stripes on black.
  hgad_test::TempDir dir("cli_auto_group");
  write_dataset(dir.path() / "data");
  for (unsigned i = 0; i < 4; ++i) {
    const fs::path path =
        dir.path() / "data/stripes/train/good" / ("s" + std::to_string(i) + ".png");
    fs::create_directories(path.parent_path());
    hgad::Tensor<float> image({64, 64});
    for (hgad::Index r = 0; r < 64; ++r)
      for (hgad::Index col = 0; col < 64; ++col) image(r, col) = (col + i) % 6 < 2 ? 1.0f : 0.0f;
    hgad::save_png(path.string(), image);
  }
  // The tiny model, trained long enough (40 passes of 3 steps) to tell the stripes apart; with the
  // paper's start the groups come from a first trained model, and the model is trained again.
  const std::string tiny =
      "image_size = 64\nmask_size = 32\nlayers = layer2\npos_dim = 8\nn_blocks = 1\n"
      "n_centers = 2\nmeta_epochs = 40\nsub_epochs = 1\nwarmup_meta_epochs = 1\n"
      "stage1_meta_epochs = 2\nbatch_size = 4\nlr = 0.002\n";
  std::ofstream(dir.file("tiny.cfg")) << tiny << "init = identity\n";
  const std::string data = dir.file("data"), model = dir.file("model.hgad");
  Run r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                       model + "' --config '" + dir.file("tiny.cfg") + "' --auto-group");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "class confusion on the training images"));
  CHECK(contains(r.out, "\n  group.group1 = a, b\n"));
  CHECK(contains(r.out, "training again with 2 classes"));
  CHECK(contains(r.out, "no class group suggested"));
  CHECK(contains(r.out, "2 classes, 1 levels"));

  r = run(dir, "info '" + model + "'");
  CHECK(contains(r.out, "classes = group1, stripes\n"));
  CHECK(contains(r.out, "group.group1 = a, b\n"));
  CHECK(contains(r.out, "# class confusion on the training images"));

  r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                   dir.file("nf.hgad") + "' --objective nf --auto-group");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "--auto-group"));
  CHECK_FALSE(fs::exists(dir.file("nf.hgad")));

  // With init = whiten the groups come from the untrained start, and the model is trained once:
  // the same model as one trained with the group in its configuration.
  std::ofstream(dir.file("whiten.cfg")) << tiny << "init = whiten\n";
  std::ofstream(dir.file("grouped.cfg")) << tiny << "init = whiten\ngroup.group1 = a, b\n";
  r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                   dir.file("once.hgad") + "' --config '" + dir.file("whiten.cfg") +
                   "' --auto-group --threads 1");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out,
                 "the untrained start (init = whiten):\nclass confusion on the training images"));
  CHECK(contains(r.out, "\n  group.group1 = a, b\n"));
  CHECK(contains(r.out, "training with 2 classes\n"));
  CHECK_FALSE(contains(r.out, "training again"));
  std::size_t trainings = 0;
  for (std::size_t at = r.err.find("training: 0/"); at != std::string::npos;
       at = r.err.find("training: 0/", at + 1))
    ++trainings;
  CHECK(trainings == 1);
  r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                   dir.file("direct.hgad") + "' --config '" + dir.file("grouped.cfg") +
                   "' --threads 1");
  REQUIRE(r.status == 0);
  CHECK(slurp(dir.file("once.hgad")) == slurp(dir.file("direct.hgad")));
}

TEST_CASE("hgad train --epochs 0 saves the data-dependent start with its class covariances and it "
          "scores",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_untrained");
  write_dataset(dir.path() / "data");
  std::ofstream(dir.file("start.cfg")) << tiny_config << "init = whiten\nclass_covariance = class\n";
  const std::string data = dir.file("data"), model = dir.file("start.hgad");
  Run r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" + model +
                       "' --config '" + dir.file("start.cfg") + "' --epochs 0");
  INFO(r.err);
  REQUIRE(r.status == 0);
  const auto start = hgad::HgadModel<float>::load(model);
  CHECK(start.epochs_trained() == 0);
  CHECK(start.config().class_covariance == hgad::ClassCovariance::class_);
  CHECK(start.prior(0).has_class_factors());
  CHECK_FALSE(start.whitening(0).is_identity());
  r = run(dir, "test --model '" + model + "' --data '" + data + "' --mode calibrated");
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK(contains(r.out, "mean"));
}

TEST_CASE("hgad train --validation holds out a share of each folder's images from training and "
          "reports their log-likelihood",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_validation");
  write_dataset(dir.path() / "data");
  std::ofstream(dir.file("tiny.cfg")) << tiny_config;
  const std::string common = "train --threads 1 --backbone '" + weights_dir() + "' --config '" + dir.file("tiny.cfg") + "'";
  // 25 % of four images: the last one of each folder (t3) is held out.
  Run r = run(dir, common + " --data '" + dir.file("data") + "' --validation 25 --out '" + dir.file("held.hgad") + "'");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  const std::string line = "validation (25 % of each class's training images, 2 images): mean log-likelihood per dimension level 0 ";
  REQUIRE(contains(r.out, line));
  const double reported = std::stod(r.out.substr(r.out.find(line) + line.size()));
  CHECK(contains(r.out, "; class accuracy "));
  // The measurements of the run: the start and each of the two passes; without --keep-best none is kept.
  CHECK(contains(r.out, "held-out mean log-likelihood per dimension (class accuracy): start "));
  CHECK(contains(r.out, ", pass 2 "));
  CHECK_FALSE(contains(r.out, " kept"));

  // The same training on a copy of the data without t3: the same model, so t3 left the training
  // and the calibration.
  fs::copy(dir.path() / "data", dir.path() / "kept", fs::copy_options::recursive);
  fs::create_directories(dir.path() / "held/a/train/good");
  fs::create_directories(dir.path() / "held/b/train/good");
  for (const std::string c : {"a", "b"}) {
    fs::rename(dir.path() / "kept" / c / "train/good/t3.png", dir.path() / "held" / c / "train/good/t3.png");
  }
  r = run(dir, common + " --data '" + dir.file("kept") + "' --out '" + dir.file("kept.hgad") + "'");
  REQUIRE(r.status == 0);
  CHECK_FALSE(contains(r.out, "validation ("));
  const auto held = hgad::HgadModel<float>::load(dir.file("held.hgad"));
  const auto kept = hgad::HgadModel<float>::load(dir.file("kept.hgad"));
  const auto pa = held.flow(0).parameters(), pb = kept.flow(0).parameters();
  REQUIRE(pa.size() == pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(pa[i].value().to_vector() == pb[i].value().to_vector());
  for (hgad::Index k = 0; k < 2; ++k)
    CHECK(held.calibration(k).train_score_max == kept.calibration(k).train_score_max);

  // The reported figure: each held-out image's mean per-dimension log-likelihood under its class,
  // averaged over the two classes, computed here from the images themselves.
  const hgad::MvtecDataset images(dir.file("held"), hgad::Split::train);
  auto fx = hgad::make_extractor<float>(held.config().features, weights_dir());
  const auto set = hgad::extract_images(images, {0, 1}, *fx, held.config().features, false);
  double expected = 0;
  for (hgad::Index i = 0; i < 2; ++i) {
    const auto raw = held.raw_scores(hgad::HgadModel<float>::image_view(set.features, i), set.classes[std::size_t(i)]);
    const auto& map = raw.log_likelihood[0];
    double mean = 0;
    for (hgad::Index p = 0; p < map.numel(); ++p) mean += double(map.data()[p]) / double(map.numel());
    expected += mean / 2;
  }
  CHECK(reported == Approx(expected).epsilon(1e-4));

  // hgad test --validation 25 scores the two held-out images (t3 of a and of b), each as it is and
  // with a synthetic defect: the normal rows' scores are those of the images themselves.
  r = run(dir, "test --threads 1 --model '" + dir.file("held.hgad") + "' --data '" + dir.file("data") +
                   "' --validation 25 --json '" + dir.file("held.json") + "'");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "images: the 25 % of each class's training images held out at training"));
  CHECK_FALSE(contains(r.out, "note: no ground_truth"));
  const std::string json = slurp(dir.file("held.json"));
  CHECK(contains(json, "\"images_of\": \"validation\""));
  const std::string held_a = (dir.path() / "data/a/train/good/t3.png").string();
  CHECK(contains(json, "\"image\": \"" + held_a + "\""));
  CHECK(contains(json, "\"image\": \"" + held_a + "#defect\""));
  CHECK_FALSE(contains(json, "t2.png"));
  const auto normal = held.score_set(set.features, set.classes, hgad::ScoreMode::calibrated);
  for (hgad::Index i = 0; i < 2; ++i) {
    const std::string image = i == 0 ? held_a : (dir.path() / "data/b/train/good/t3.png").string();
    const std::size_t at = json.find("\"image\": \"" + image + "\"");
    REQUIRE(at != std::string::npos);
    const std::size_t score_at = json.find("\"score\": ", at);
    REQUIRE(score_at != std::string::npos);
    const double score = std::stod(json.substr(score_at + 9));
    CHECK(score == Approx(normal[std::size_t(i)].score).epsilon(1e-5));
  }
  // --defects spread: the same held-out images, the normal rows scored as before, the defective
  // rows carrying defects of other sizes; the JSON and the table name the sizes.
  CHECK(contains(r.out, "with a synthetic defect (large)"));
  CHECK(contains(json, "\"defects\": \"large\""));
  r = run(dir, "test --threads 1 --model '" + dir.file("held.hgad") + "' --data '" +
                   dir.file("data") + "' --validation 25 --defects spread --json '" +
                   dir.file("spread.json") + "'");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "with a synthetic defect (spread)"));
  const std::string spread = slurp(dir.file("spread.json"));
  CHECK(contains(spread, "\"defects\": \"spread\""));
  const auto score_of = [](const std::string& text, const std::string& image) {
    const std::size_t at = text.find("\"image\": \"" + image + "\"");
    REQUIRE(at != std::string::npos);
    return std::stod(text.substr(text.find("\"score\": ", at) + 9));
  };
  CHECK(score_of(spread, held_a) == score_of(json, held_a));
  CHECK(score_of(spread, held_a + "#defect") != score_of(json, held_a + "#defect"));
  r = run(dir, "test --model '" + dir.file("held.hgad") + "' --data '" + dir.file("data") +
                   "' --validation 25 --defects huge");
  CHECK(r.status == 2);
  CHECK(contains(r.err,
                 "--defects: synthetic defects 'huge': expected large, small, spread or wide"));
  r = run(dir, "test --model '" + dir.file("held.hgad") + "' --data '" + dir.file("data") +
                   "' --defects small");
  CHECK(r.status == 2);
  CHECK(contains(r.err,
                 "--defects sizes the synthetic defects of --validation: it needs --validation"));

  // A model trained on every image, or with another share held out, is refused.
  r = run(dir, "test --model '" + dir.file("kept.hgad") + "' --data '" + dir.file("kept") + "' --validation 25");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "was trained on all its training images"));
  r = run(dir, "test --model '" + dir.file("held.hgad") + "' --data '" + dir.file("data") + "' --validation 30");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "was trained with --validation 25"));

  // --keep-best ends on the best of the three measurements, and says which.
  r = run(dir, common + " --data '" + dir.file("data") + "' --validation 25 --keep-best --out '" + dir.file("best.hgad") + "'");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, " kept"));
  r = run(dir, common + " --data '" + dir.file("data") + "' --keep-best --out '" + dir.file("never.hgad") + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "--keep-best"));
  write_embeddings(dir, false);
  r = run(dir, "embeddings --data '" + dir.path().string() + "' --keep-best");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "--keep-best"));

  // Folders too small to hold an image out, and a resumed run, are refused before any training.
  fs::create_directories(dir.path() / "small/a/train/good");
  fs::copy(dir.path() / "data/a/train/good/t0.png", dir.path() / "small/a/train/good/t0.png");
  fs::copy(dir.path() / "data/a/train/good/t1.png", dir.path() / "small/a/train/good/t1.png");
  fs::copy(dir.path() / "data/b", dir.path() / "small/b", fs::copy_options::recursive);
  r = run(dir, common + " --data '" + dir.file("small") + "' --validation 25 --out '" + dir.file("never.hgad") + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "class folder 'a' has 2 training images"));
  CHECK_FALSE(fs::exists(dir.file("never.hgad")));
  r = run(dir, "train --resume '" + dir.file("held.hgad") + "' --validation 25 --data '" + dir.file("data") +
                   "' --backbone '" + weights_dir() + "' --out '" + dir.file("never.hgad") + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "drop --validation"));
}

TEST_CASE("hgad calibrate gives a trained model new scoring settings: the model a training with "
          "them writes",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_calibrate");
  write_dataset(dir.path() / "data");
  const std::string scoring = "map_scale = log\nlevel_weights = 2\nmap_sigma = 1.5\n"
                              "pixel_map_sigma = 2\nimage_score_fraction = 0.1\n"
                              "threshold_quantile = 0.5\n";
  std::ofstream(dir.file("tiny.cfg")) << tiny_config;
  std::ofstream(dir.file("scoring.cfg")) << scoring;
  std::ofstream(dir.file("both.cfg")) << tiny_config << scoring;
  const std::string train = "train --threads 1 --backbone '" + weights_dir() + "' --data '" +
                            dir.file("data") + "' --validation 25 --config ";
  Run r = run(dir, train + "'" + dir.file("tiny.cfg") + "' --out '" + dir.file("paper.hgad") + "'");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  r = run(dir, train + "'" + dir.file("both.cfg") + "' --out '" + dir.file("direct.hgad") + "'");
  REQUIRE(r.status == 0);
  // The model trained with the paper's scoring, calibrated again with the new settings on its own
  // training images (--validation's held-out images left out, as the training left them out).
  r = run(dir, "calibrate --threads 1 --model '" + dir.file("paper.hgad") + "' --data '" +
                   dir.file("data") + "' --config '" + dir.file("scoring.cfg") + "' --out '" +
                   dir.file("again.hgad") + "'");
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "wrote " + dir.file("again.hgad") +
                            ": calibrated on 6 training images of 2 classes (25 % held out)"));
  // The configuration and the calibration of the two classes and of all together (entry 2).
  const auto check_same_calibration = [](const hgad::HgadModel<float>& a,
                                         const hgad::HgadModel<float>& b) {
    CHECK(a.config() == b.config());
    for (hgad::Index k = 0; k <= 2; ++k) {
      CHECK(a.calibration(k).train_score_max == b.calibration(k).train_score_max);
      CHECK(a.calibration(k).threshold == b.calibration(k).threshold);
    }
  };
  const auto direct = hgad::HgadModel<float>::load(dir.file("direct.hgad"));
  const auto again = hgad::HgadModel<float>::load(dir.file("again.hgad"));
  const auto paper = hgad::HgadModel<float>::load(dir.file("paper.hgad"));
  check_same_calibration(again, direct);
  CHECK(again.metadata("validation_percent") == "25");
  for (hgad::Index k = 0; k <= 2; ++k)
    CHECK(again.calibration(k).train_score_max != paper.calibration(k).train_score_max);
  // hgad test --validation scores the held-out images with the new settings.
  r = run(dir, "test --threads 1 --model '" + dir.file("again.hgad") + "' --data '" +
                   dir.file("data") + "' --validation 25 --json '" + dir.file("again.json") + "'");
  REQUIRE(r.status == 0);
  r = run(dir, "test --threads 1 --model '" + dir.file("direct.hgad") + "' --data '" +
                   dir.file("data") + "' --validation 25 --json '" + dir.file("direct.json") + "'");
  REQUIRE(r.status == 0);
  // Every metric, score and decision alike (the JSON from its "objective" on, before the model's
  // path and after it the configuration, which is the same).
  const auto figures = [](const std::string& json) { return json.substr(json.find("\"objective\"")); };
  CHECK(figures(slurp(dir.file("again.json"))) == figures(slurp(dir.file("direct.json"))));

  // A model with a class group (a and b as one class, beside c) and a cap on the calibration
  // images: the calibration's classes are the model's, its images spread over the group's folders
  // in the training's order, as the training's own calibration takes them.
  fs::copy(dir.path() / "data", dir.path() / "three", fs::copy_options::recursive);
  for (unsigned i = 0; i < 4; ++i)
    write_image((dir.path() / "three/c/train/good" / ("t" + std::to_string(i) + ".png")).string(),
                i + 3, false);
  const std::string grouped = std::string(tiny_config) + "calibration_images = 3\ngroup.ab = a, b\n";
  std::ofstream(dir.file("grouped.cfg")) << grouped;
  std::ofstream(dir.file("grouped_both.cfg")) << grouped << scoring;
  const std::string train_three = "train --threads 1 --backbone '" + weights_dir() + "' --data '" +
                                  dir.file("three") + "' --config ";
  REQUIRE(run(dir, train_three + "'" + dir.file("grouped.cfg") + "' --out '" +
                       dir.file("grouped.hgad") + "'").status == 0);
  REQUIRE(run(dir, train_three + "'" + dir.file("grouped_both.cfg") + "' --out '" +
                       dir.file("grouped_direct.hgad") + "'").status == 0);
  r = run(dir, "calibrate --threads 1 --model '" + dir.file("grouped.hgad") + "' --data '" +
                   dir.file("three") + "' --config '" + dir.file("scoring.cfg") + "' --out '" +
                   dir.file("grouped_again.hgad") + "'");
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "calibrated on 12 training images of 2 classes"));
  check_same_calibration(hgad::HgadModel<float>::load(dir.file("grouped_again.hgad")),
                         hgad::HgadModel<float>::load(dir.file("grouped_direct.hgad")));

  // In place: --out may be the model it reads.
  fs::copy_file(dir.file("paper.hgad"), dir.file("inplace.hgad"));
  r = run(dir, "calibrate --threads 1 --model '" + dir.file("inplace.hgad") + "' --data '" +
                   dir.file("data") + "' --config '" + dir.file("scoring.cfg") + "' --out '" +
                   dir.file("inplace.hgad") + "'");
  REQUIRE(r.status == 0);
  const auto inplace = hgad::HgadModel<float>::load(dir.file("inplace.hgad"));
  CHECK(inplace.config() == direct.config());
  CHECK(inplace.calibration(0).threshold == direct.calibration(0).threshold);

  // A setting of the training is refused, naming it, and nothing is written.
  std::ofstream(dir.file("lr.cfg")) << "lr = 0.1\n";
  r = run(dir, "calibrate --model '" + dir.file("paper.hgad") + "' --data '" + dir.file("data") +
                   "' --config '" + dir.file("lr.cfg") + "' --out '" + dir.file("never.hgad") + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "'lr' enters the start or the training"));
  std::ofstream(dir.file("three.cfg")) << "level_weights = 1, 2, 3\n";
  r = run(dir, "calibrate --model '" + dir.file("paper.hgad") + "' --data '" + dir.file("data") +
                   "' --config '" + dir.file("three.cfg") + "' --out '" + dir.file("never.hgad") + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "level_weights = 1, 2, 3: needs as many weights as levels (1)"));
  r = run(dir, "calibrate --model '" + dir.file("paper.hgad") + "' --data '" + dir.file("data") + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "missing required option --out"));
  CHECK_FALSE(fs::exists(dir.file("never.hgad")));
}

TEST_CASE("hgad train --auto-group keeps the first model when the groups would leave one class",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_auto_group_one");
  write_dataset(dir.path() / "data");  // a and b hold the same images: one group of both
  std::ofstream(dir.file("tiny.cfg"))
      << "image_size = 64\nmask_size = 32\nlayers = layer2\npos_dim = 8\nn_blocks = 1\n"
         "n_centers = 2\nmeta_epochs = 20\nsub_epochs = 1\nwarmup_meta_epochs = 1\n"
         "stage1_meta_epochs = 2\nbatch_size = 4\nlr = 0.002\n";
  const std::string model = dir.file("model.hgad");
  const Run r = run(dir, "train --data '" + dir.file("data") + "' --backbone '" + weights_dir() + "' --out '" +
                             model + "' --config '" + dir.file("tiny.cfg") + "' --auto-group");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "group.group1 = a, b"));
  CHECK(contains(r.out, "would leave one class"));
  CHECK_FALSE(contains(r.out, "training again"));
  CHECK(contains(r.out, "2 classes, 1 levels"));
}

TEST_CASE("hgad embeddings names a non-finite feature value", "[model][cli]") {
  REQUIRE_CLI();
  hgad_test::TempDir dir("cli_embeddings");
  write_embeddings(dir, true);
  const std::string json = dir.file("out.json");
  const Run r = run(dir, "embeddings --data '" + dir.path().string() + "' --json '" + json + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "b_X.npy' row 1 column 2 is nan"));
  CHECK_FALSE(fs::exists(json));
}

namespace {

/// Embeddings of classes a and b, 3 features each: 16 training normals, then 6 normal and 6
/// anomalous test rows per class, drawn from Gaussians of different means and covariances
/// (anomalies: the normal draw scaled by 2.5), in the layout hgad embeddings reads. Returns each
/// class's rows (28, 3) in file order.
std::vector<Eigen::MatrixXd> write_gaussian_embeddings(const hgad_test::TempDir& dir) {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::string csv = "class,class_index,row,y,split\n";
  std::vector<Eigen::MatrixXd> classes;
  for (const std::string c : {"a", "b"}) {
    Eigen::Matrix3d mix;
    mix << 1.0, 0.0, 0.0, 0.6, 0.8, 0.0, -0.3, 0.2, 0.5;
    if (c == "b") mix = mix.transpose().eval() * 1.5;
    const Eigen::Vector3d mean = c == "a" ? Eigen::Vector3d(1, 2, 3) : Eigen::Vector3d(-2, 0, 4);
    Eigen::MatrixXd rows(28, 3);
    std::vector<std::int64_t> y;
    for (int i = 0; i < 28; ++i) {
      Eigen::Vector3d z(normal(rng), normal(rng), normal(rng));
      if (i >= 22) z *= 2.5;
      rows.row(i) = (mix * z + mean).transpose();
      y.push_back(i >= 22 ? 1 : 0);
      csv += c + "," + (c == "a" ? "0" : "1") + "," + std::to_string(i) + "," +
             (i >= 22 ? "1" : "0") + "," + (i < 16 ? "train" : "test") + "\n";
    }
    hgad::Tensor<float> x({28, 3});
    for (int i = 0; i < 28; ++i)
      for (int j = 0; j < 3; ++j) x(i, j) = float(rows(i, j));
    hgad::save_npy(dir.file(c + "_X.npy"), x);
    hgad::save_npy_int64(dir.file(c + "_y.npy"), y);
    classes.push_back(x.as_matrix().cast<double>());
  }
  std::ofstream(dir.file("unified_split_seed0.csv")) << csv;
  return classes;
}

/// The number after `"key": ` in the first JSON object that follows `"anchor": {` in text.
double json_number(const std::string& text, const std::string& anchor, const std::string& key) {
  const std::size_t at = text.find("\"" + anchor + "\": {");
  REQUIRE(at != std::string::npos);
  const std::size_t k = text.find("\"" + key + "\": ", at);
  REQUIRE(k != std::string::npos);
  REQUIRE(k < text.find('}', at));
  return std::strtod(text.c_str() + k + key.size() + 4, nullptr);
}

/// Ledoit–Wolf covariance (hgad::ledoit_wolf_covariance) of the rows of x, in double.
hgad::ShrunkCovariance ledoit_wolf_of(const Eigen::MatrixXd& x) {
  hgad::Tensor<double> t({x.rows(), x.cols()});
  t.as_matrix() = x;
  return hgad::ledoit_wolf_covariance(t);
}

/// The image AUROC of the Mahalanobis distance to N(mean, covariance) over the test rows 16..27.
double mahalanobis_auroc(const Eigen::MatrixXd& rows, const Eigen::VectorXd& mean,
                         const Eigen::MatrixXd& covariance) {
  const Eigen::LDLT<Eigen::MatrixXd> solver(covariance);
  std::vector<double> scores;
  std::vector<int> y;
  for (int i = 16; i < 28; ++i) {
    const Eigen::VectorXd d = rows.row(i).transpose() - mean;
    scores.push_back(d.dot(solver.solve(d)));
    y.push_back(i >= 22 ? 1 : 0);
  }
  return hgad::roc_auc_score(y, scores);
}

}  // namespace

TEST_CASE("hgad embeddings scores a Gaussian per class and a shared Gaussian beside the model",
          "[model][cli]") {
  REQUIRE_CLI();
  hgad_test::TempDir dir("cli_embeddings_baselines");
  const std::vector<Eigen::MatrixXd> classes = write_gaussian_embeddings(dir);
  const std::string data = "embeddings --data '" + dir.path().string() + "' --threads 1";

  // The baselines against the closed form, computed here from the training rows: the shared
  // Gaussian N(μ, Σ_LW) of all 32 rows; class y's Gaussian, in the shared whitened space
  // w = L⁻¹(x − μ) (L Lᵀ = Σ_LW), is N(w̄_y, Σ_y) with Σ_y the Ledoit–Wolf covariance of the class's
  // whitened rows (docs/algorithm.md §3.1.2).
  Eigen::MatrixXd train(32, 3);
  train << classes[0].topRows(16), classes[1].topRows(16);
  const hgad::ShrunkCovariance shared = ledoit_wolf_of(train);
  const Eigen::MatrixXd L = Eigen::LLT<Eigen::MatrixXd>(shared.covariance).matrixL();
  auto whiten = [&](const Eigen::MatrixXd& x) -> Eigen::MatrixXd {
    return L.triangularView<Eigen::Lower>()
        .solve((x.rowwise() - shared.mean.transpose()).transpose())
        .transpose();
  };
  Run r = run(dir, data + " --epochs 2 --json -");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "\"gaussian_baselines\": \"fitted\""));
  CHECK(contains(r.err, "gauss-class"));
  for (int k = 0; k < 2; ++k) {
    const std::string name = k == 0 ? "a" : "b";
    CAPTURE(name);
    CHECK(json_number(r.out, name, "image_auroc_gaussian_shared") ==
          Approx(mahalanobis_auroc(classes[k], shared.mean, shared.covariance)).margin(1e-12));
    const Eigen::MatrixXd w = whiten(classes[k]);
    const hgad::ShrunkCovariance own = ledoit_wolf_of(w.topRows(16));
    CHECK(json_number(r.out, name, "image_auroc_gaussian_per_class") ==
          Approx(mahalanobis_auroc(w, own.mean, own.covariance)).margin(1e-12));
  }

  // The same Gaussians as untrained models of the command: the per-class one is the untrained
  // intra-covariance HGAD model of one centre, the shared one the untrained whitened NF model.
  std::ofstream(dir.file("per_class.cfg"))
      << "init = whiten\nclass_covariance = intra\nn_centers = 1\n";
  std::ofstream(dir.file("shared.cfg")) << "init = whiten\n";
  r = run(dir, data + " --epochs 0 --json - --config '" + dir.file("per_class.cfg") + "'");
  REQUIRE(r.status == 0);
  const std::string per_class_run = r.out;
  r = run(dir,
          data + " --epochs 0 --json - --objective nf --config '" + dir.file("shared.cfg") + "'");
  REQUIRE(r.status == 0);
  for (const std::string name : {"a", "b", "mean"}) {
    CAPTURE(name);
    CHECK(json_number(per_class_run, name, "image_auroc_given_logp") ==
          json_number(per_class_run, name, "image_auroc_gaussian_per_class"));
    CHECK(json_number(r.out, name, "image_auroc_given_logp") ==
          json_number(r.out, name, "image_auroc_gaussian_shared"));
  }

  // --no-baselines leaves them out; a covariance that cannot be fitted (four rows, two of them
  // distinct, in three dimensions) is said, and the figures of a model of the paper's start, which
  // fits none, stand; the default start, which whitens, names the level and the way out.
  r = run(dir, data + " --epochs 1 --no-baselines --json -");
  REQUIRE(r.status == 0);
  CHECK_FALSE(contains(r.out, "gaussian_per_class"));
  CHECK(contains(r.out, "\"gaussian_baselines\": \"skipped (--no-baselines)\""));
  CHECK_FALSE(contains(r.err, "gauss-class"));
  hgad_test::TempDir tiny("cli_embeddings_baselines_tiny");
  write_embeddings(tiny, false);
  std::ofstream(tiny.file("paper_start.cfg")) << "init = identity\n";
  const std::string tiny_run =
      "embeddings --data '" + tiny.path().string() + "' --epochs 1 --threads 1";
  r = run(tiny, tiny_run + " --config '" + tiny.file("paper_start.cfg") + "'");
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "the Gaussian baselines were not fitted: "));
  CHECK(contains(r.out, "not positive definite"));
  CHECK(contains(r.out, "given-logp"));
  r = run(tiny, tiny_run);
  CHECK(r.status == 1);
  CHECK(contains(r.err, "the features of level 0 is not positive definite"));
  CHECK(contains(r.err, "init = identity"));
}

TEST_CASE("hgad test --defect-kinds adds a row per kind of defect and leaves the class's own",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_defect_kinds");
  const fs::path root = dir.path() / "data";
  write_dataset(root);
  // A second kind of defect in class a: one image.
  write_image((root / "a/test/scratch/s0.png").string(), 3, true);
  write_mask((root / "a/ground_truth/scratch/s0_mask.png").string());
  std::ofstream(dir.file("tiny.cfg")) << tiny_config;
  const std::string data = root.string(), model = dir.file("model.hgad");
  Run r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                       model + "' --config '" + dir.file("tiny.cfg") + "' --threads 2");
  INFO(r.err);
  REQUIRE(r.status == 0);

  const std::string test = "test --model '" + model + "' --data '" + data + "' --threads 2 --json ";
  r = run(dir, test + "'" + dir.file("plain.json") + "'");
  REQUIRE(r.status == 0);
  CHECK_FALSE(contains(r.out, "  dent"));
  r = run(dir, test + "'" + dir.file("kinds.json") + "' --defect-kinds");
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "\n  dent "));
  CHECK(contains(r.out, "\n  scratch "));
  const std::string plain = slurp(dir.file("plain.json")), kinds = slurp(dir.file("kinds.json"));
  CHECK(contains(kinds, "\"defect_kinds\""));
  CHECK_FALSE(contains(plain, "\"defect_kinds\""));
  // Class a: 2 good, 2 dents and a scratch; each kind row holds the good images and its own.
  CHECK(json_number(kinds, "a", "images") == 5);
  CHECK(json_number(kinds, "dent", "images") == 4);
  CHECK(json_number(kinds, "dent", "anomalous") == 2);
  CHECK(json_number(kinds, "scratch", "images") == 3);
  CHECK(json_number(kinds, "scratch", "anomalous") == 1);
  for (const std::string key : {"image_auroc", "pixel_auroc", "aupro"}) {
    INFO(key);
    CHECK(json_number(kinds, "a", key) == json_number(plain, "a", key));
    CHECK(json_number(kinds, "mean", key) == json_number(plain, "mean", key));
  }

  r = run(dir, test + "'" + dir.file("never.json") + "' --defect-kinds --validation 25");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "--defect-kinds"));
  CHECK_FALSE(fs::exists(dir.file("never.json")));
}

TEST_CASE("hgad train killed after a checkpoint and resumed with --resume ends on the same model",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_resume");
  write_dataset(dir.path() / "data");
  // 100 passes of 2 steps, a checkpoint after each: the kill below lands long before the end.
  std::ofstream(dir.file("run.cfg"))
      << "image_size = 64\nmask_size = 32\nlayers = layer2\npos_dim = 8\nn_blocks = 1\nn_centers = 2\n"
         "meta_epochs = 100\nsub_epochs = 1\nwarmup_meta_epochs = 1\nstage1_meta_epochs = 1\nbatch_size = 4\n";
  const std::string common = "train --threads 1 --data '" + dir.file("data") + "' --backbone '" + weights_dir() + "'";
  Run r = run(dir, common + " --config '" + dir.file("run.cfg") + "' --out '" + dir.file("through.hgad") + "'");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);

  // The same run with --checkpoint-every 1, killed (SIGKILL) once its first checkpoint is written.
  const std::string killed = dir.file("killed.hgad"), checkpoint = killed + ".checkpoint";
  const std::string script = "'" + cli_path() + "' " + common + " --config '" + dir.file("run.cfg") +
                             "' --checkpoint-every 1 --out '" + killed + "' >/dev/null 2>&1 & pid=$!; " +
                             "while [ ! -f '" + checkpoint + "' ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; " +
                             "kill -9 $pid; wait $pid";
  CHECK(std::system(script.c_str()) != -1);
  REQUIRE(fs::exists(checkpoint));
  REQUIRE_FALSE(fs::exists(killed));
  r = run(dir, "info '" + checkpoint + "'");
  CHECK(r.status == 0);  // a checkpoint is a model file too

  r = run(dir, common + " --resume '" + checkpoint + "' --config x.cfg --out '" + dir.file("resumed.hgad") + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.err, "drop --config"));
  r = run(dir, common + " --resume '" + checkpoint + "' --checkpoint-every 10 --out '" + killed + "'");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK_FALSE(fs::exists(checkpoint));  // the finished model supersedes it

  const auto a = hgad::HgadModel<float>::load(dir.file("through.hgad"));
  const auto b = hgad::HgadModel<float>::load(killed);
  CHECK(a.epochs_trained() == 100);
  CHECK(b.epochs_trained() == 100);
  for (hgad::Index l = 0; l < a.n_levels(); ++l) {
    const auto pa = a.flow(l).parameters(), pb = b.flow(l).parameters();
    for (std::size_t i = 0; i < pa.size(); ++i) CHECK(pa[i].value().to_vector() == pb[i].value().to_vector());
    const auto qa = a.prior(l).parameters(), qb = b.prior(l).parameters();
    for (std::size_t i = 0; i < qa.size(); ++i) CHECK(qa[i].value().to_vector() == qb[i].value().to_vector());
  }
  CHECK(a.calibration(0).train_score_max == b.calibration(0).train_score_max);
}

/// `mpirun ... -np 2` with the flags Open MPI needs here (--oversubscribe on a small machine,
/// --allow-run-as-root as root), or "" when HGAD_MPIEXEC is not set (hgad built without MPI).
std::string mpirun_np2() {
  const char* mpiexec = std::getenv("HGAD_MPIEXEC");
  if (mpiexec == nullptr || *mpiexec == '\0') return "";
  std::string launcher = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 '" +
                         std::string(mpiexec) + "' --oversubscribe";
  if (::geteuid() == 0) launcher += " --allow-run-as-root";
  return launcher + " -np 2";
}

TEST_CASE(
    "hgad train under mpirun -np 2 trains the model of one process, and a dying rank ends the job "
    "and leaves the last checkpoint",
    "[model][cli][mpi]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  const std::string mpirun = mpirun_np2();
  if (mpirun.empty()) {
    WARN("skipped: HGAD_MPIEXEC is not set (hgad built without MPI)");
    return;
  }
  hgad_test::TempDir dir("cli_mpi");
  write_dataset(dir.path() / "data");
  // Batches of 4 images: 2 per rank. Both starts: the paper's gives one process's parameters up to
  // rounding. The default start is the maximum-likelihood Gaussian of the features, where the first
  // gradients of the couplings' last layers (zero at the start) and offsets are small sums of large
  // terms: rounding decides much of them, and Adam makes that a step of the learning rate's size
  // (such parameters differ by up to 1e-4 between one and two processes), so there the check is
  // the start (its whitening bit for bit: every rank holds every image's features) and the
  // calibration.
  for (const bool paper_start : {true, false}) {
    INFO("paper's start " << paper_start);
    std::ofstream(dir.file("tiny.cfg")) << tiny_config << (paper_start ? "init = identity\n" : "");
    const std::string common = "train --threads 1 --data '" + dir.file("data") + "' --backbone '" +
                               weights_dir() + "' --config '" + dir.file("tiny.cfg") + "'";
    Run r = run(dir, common + " --out '" + dir.file("one.hgad") + "'");
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    r = run(dir, common + " --out '" + dir.file("two.hgad") + "'", mpirun);
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    CHECK(contains(r.err, "2 processes"));

    const auto one = hgad::HgadModel<float>::load(dir.file("one.hgad"));
    const auto two = hgad::HgadModel<float>::load(dir.file("two.hgad"));
    CHECK(two.epochs_trained() == one.epochs_trained());
    CHECK(one.whitening(0).is_identity() == paper_start);
    CHECK(two.whitening(0).mean().to_vector() == one.whitening(0).mean().to_vector());
    CHECK(two.whitening(0).matrix().to_vector() == one.whitening(0).matrix().to_vector());
    double worst = 0;
    for (hgad::Index l = 0; l < one.n_levels(); ++l) {
      auto pa = one.flow(l).parameters(), pb = two.flow(l).parameters();
      for (const auto& p : one.prior(l).parameters()) pa.push_back(p);
      for (const auto& p : two.prior(l).parameters()) pb.push_back(p);
      REQUIRE(pa.size() == pb.size());
      for (std::size_t i = 0; i < pa.size(); ++i) {
        const auto a = pa[i].value().to_vector(), b = pb[i].value().to_vector();
        REQUIRE(a.size() == b.size());
        for (std::size_t k = 0; k < a.size(); ++k) {
          REQUIRE(std::isfinite(b[k]));
          worst = std::max(worst,
                           std::abs(double(a[k]) - double(b[k])) / (1 + std::abs(double(a[k]))));
        }
      }
    }
    // The sums of two half batches round differently from the one batch's.
    if (paper_start) CHECK(worst <= 1e-5);
    const double t1 = one.calibration(0).train_score_max, t2 = two.calibration(0).train_score_max;
    CHECK(std::abs(t1 - t2) <= 1e-3 * (1 + std::abs(t1)));
  }

  // A long run checkpointing every pass; one of its two processes is killed (SIGKILL) once the
  // first checkpoint exists. The job ends with an error that says so, and the checkpoint loads.
  std::string long_config = tiny_config;
  long_config.replace(long_config.find("meta_epochs = 2"), 15, "meta_epochs = 100000");
  std::ofstream(dir.file("long.cfg")) << long_config;
  const std::string out = dir.file("long.hgad"), checkpoint = out + ".checkpoint";
  const std::string script =
      mpirun + " '" + cli_path() + "' train --threads 1 --data '" + dir.file("data") +
      "' --backbone '" + weights_dir() + "' --config '" + dir.file("long.cfg") +
      "' --checkpoint-every 1 --out '" + out + "' >'" + dir.file("long.out") + "' 2>'" +
      dir.file("long.err") + "' & job=$!; " + "while [ ! -f '" + checkpoint +
      "' ] && kill -0 $job 2>/dev/null; do sleep 0.01; done; " +
      "kill -9 $(pgrep -n -P $job hgad); wait $job; echo $? >'" + dir.file("long.status") + "'";
  CHECK(std::system(script.c_str()) != -1);
  const std::string err = slurp(dir.file("long.err"));
  INFO(err);
  CHECK(slurp(dir.file("long.status")) != "0\n");
  CHECK(contains(err, "signal 9"));
  REQUIRE(fs::exists(checkpoint));
  CHECK_FALSE(fs::exists(out));
  const auto [model, state] = hgad::HgadModel<float>::load_checkpoint(checkpoint);
  CHECK(state.passes_done >= 1);
  for (const auto& entry : fs::directory_iterator(dir.path()))
    CHECK_FALSE(contains(entry.path().filename().string(), ".tmp."));
}

TEST_CASE("hgad --device cuda says why it cannot run here", "[model][cli]") {
  REQUIRE_CLI();
  hgad_test::TempDir dir("cli_device");
  const std::string folder = "'" + dir.path().string() + "'";
  const Run r = run(dir, "train --data " + folder + " --backbone " + folder + " --out '" + dir.file("m.hgad") +
                             "' --device cuda");
  // Built without CUDA, the build option is named; built with it on a machine without a GPU (CI),
  // the missing device. Either way before any work, and no file is written.
  INFO(r.err);
  CHECK(r.status == 1);
  CHECK((contains(r.err, "HGAD_ENABLE_CUDA") || contains(r.err, "no CUDA device is usable")));
  CHECK_FALSE(fs::exists(dir.file("m.hgad")));
  const Run unknown = run(dir, "train --data " + folder + " --backbone " + folder + " --out '" +
                                   dir.file("m.hgad") + "' --device tpu");
  CHECK(unknown.status == 2);
  CHECK(contains(unknown.err, "unknown device 'tpu'"));
}

namespace {

/// The bytes a FIFO holds once its writers are gone, read from a descriptor opened before them.
std::string drain(int fd) {
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof(buffer))) > 0;)
    text.append(buffer, std::size_t(n));
  return text;
}

bool is_fifo(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

}  // namespace

TEST_CASE("hgad program writes --json - to standard output and a FIFO or a link target in place",
          "[model][cli]") {
  REQUIRE_CLI();
  hgad_test::TempDir dir("cli_json_targets");
  write_gaussian_embeddings(dir);
  const std::string embeddings =
      "embeddings --data '" + dir.path().string() + "' --epochs 2 --threads 1 --json ";

  // `-` is standard output, with the table moved to standard error; no file named '-'.
  Run r = run(dir, embeddings + "-", "cd '" + dir.path().string() + "' &&");
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.rfind("{\n", 0) == 0);
  CHECK(contains(r.out, "\"image_auroc_given\""));
  CHECK(r.out.size() >= 2);
  CHECK(r.out.substr(r.out.size() - 2) == "}\n");
  CHECK(contains(r.err, "label-free"));
  CHECK_FALSE(fs::exists(dir.path() / "-"));

  // A FIFO receives the JSON and stays a FIFO (a reader is open before the program starts).
  const std::string fifo = dir.file("report.fifo");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(reader >= 0);
  r = run(dir, embeddings + "'" + fifo + "'");
  const std::string received = drain(reader);
  ::close(reader);
  CHECK(r.status == 0);
  CHECK(contains(received, "\"image_auroc_given\""));
  CHECK(is_fifo(fifo));

  // A symbolic link is followed: its target is replaced, the link stays.
  std::ofstream(dir.file("real.json")) << "old";
  fs::create_symlink("real.json", dir.path() / "link.json");
  r = run(dir, embeddings + "'" + dir.file("link.json") + "'");
  CHECK(r.status == 0);
  CHECK(fs::is_symlink(dir.path() / "link.json"));
  CHECK(contains(slurp(dir.file("real.json")), "\"image_auroc_given\""));
  // A dangling link: the file it names is created.
  fs::create_symlink("made.json", dir.path() / "dangling.json");
  r = run(dir, embeddings + "'" + dir.file("dangling.json") + "'");
  CHECK(r.status == 0);
  CHECK(fs::is_symlink(dir.path() / "dangling.json"));
  CHECK(contains(slurp(dir.file("made.json")), "\"image_auroc_given\""));
  for (const auto& entry : fs::directory_iterator(dir.path()))
    CHECK_FALSE(contains(entry.path().filename().string(), ".tmp."));
}

TEST_CASE("hgad info and --config check the header and read bounded: /dev/zero ends at once",
          "[model][cli]") {
  REQUIRE_CLI();
  hgad_test::TempDir dir("cli_bounded");
  // `timeout` turns a read that never ends into status 124 instead of a hung test.
  Run r = run(dir, "info /dev/zero", "timeout 60");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "'/dev/zero' is not an hgad checkpoint"));

  r = run(dir, "train --data d --backbone b --out m --config /dev/zero", "timeout 60");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "'/dev/zero' is larger than 1 MiB"));

  // A 2 MiB config file (sparse) is refused by its size, named.
  const std::string big = dir.file("big.cfg");
  std::ofstream(big) << "n_blocks = 1\n";
  fs::resize_file(big, std::uintmax_t(2) << 20);
  r = run(dir, "train --data d --backbone b --out m --config '" + big + "'", "timeout 60");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "big.cfg' is larger than 1 MiB"));

  // A model header announcing 2^60 payload bytes over a 100-byte body: truncated, not 2^60 read.
  std::vector<unsigned char> header = {'H', 'G', 'A', 'D', 'C', 'K', 'P', 'T', 1, 0, 0, 0};
  for (int k = 0; k < 8; ++k) header.push_back(k == 7 ? 0x10 : 0);
  header.resize(24 + 100, 0);
  hgad_test::write_bytes(dir.file("huge.hgad"), header);
  r = run(dir, "info '" + dir.file("huge.hgad") + "'", "timeout 60");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "huge.hgad' is truncated"));
}

TEST_CASE("hgad program's JSON writer prints no -0 and ends with a newline", "[model][cli]") {
  hgad_cli::Json j = hgad_cli::Json::object();
  j.set("negative_zero", hgad_cli::Json::number(-0.0));
  j.set("zero", hgad_cli::Json::number(0.0));
  j.set("half", hgad_cli::Json::number(-0.5));
  CHECK(j.dump(0) == "{\"negative_zero\":0,\"zero\":0,\"half\":-0.5}\n");
}

namespace {

/// A 64x64 24-bit BMP (a fixed 12342 bytes, whatever the pixels): the picture of write_image.
void write_bmp(const std::string& path, unsigned seed, bool defect) {
  std::vector<unsigned char> bytes = {'B', 'M'};
  auto put32 = [&](std::uint32_t v) {
    for (int k = 0; k < 4; ++k) bytes.push_back((unsigned char)(v >> (8 * k)));
  };
  auto put16 = [&](std::uint16_t v) {
    bytes.push_back((unsigned char)(v & 0xff));
    bytes.push_back((unsigned char)(v >> 8));
  };
  put32(54 + 64 * 64 * 3);
  put32(0);
  put32(54);
  put32(40);
  put32(64);
  put32(64);
  put16(1);
  put16(24);
  for (int k = 0; k < 6; ++k) put32(0);
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 64; ++j) {
      const bool light = (i / 8 + j / 8 + seed) % 2 != 0;
      const bool square = defect && i > 20 && i < 30 && j > 20 && j < 30;
      const unsigned char v = square ? 255 : light ? 153 : 102;
      bytes.insert(bytes.end(), {v, v, v});
    }
  hgad_test::write_bytes(path, bytes);
}

/// A mask with a 9x9 square at rows and columns [first, first + 9).
void write_mask_at(const std::string& path, hgad::Index first) {
  hgad::Tensor<float> mask({64, 64});
  for (hgad::Index i = first; i < first + 9; ++i)
    for (hgad::Index j = first; j < first + 9; ++j) mask(i, j) = 1.0f;
  hgad::save_png(path, mask);
}

/// The training command of the tiny model on `data`, written to `model`.
std::string train_tiny(const hgad_test::TempDir& dir, const std::string& data,
                       const std::string& model) {
  std::ofstream(dir.file("tiny.cfg")) << tiny_config;
  return "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" + model +
         "' --config '" + dir.file("tiny.cfg") + "' --threads 2";
}

/// Writes the data set of write_dataset under dir/data and trains a tiny model on it (train_tiny);
/// returns the model's path.
std::string tiny_model_on_dataset(const hgad_test::TempDir& dir) {
  const fs::path root = dir.path() / "data";
  write_dataset(root);
  const std::string model = dir.file("model.hgad");
  const Run r = run(dir, train_tiny(dir, root.string(), model));
  INFO(r.err);
  REQUIRE(r.status == 0);
  return model;
}

/// The records of an RFC 4180 CSV text, each a list of fields.
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows(1);
  std::string field;
  bool quoted = false, was_quoted = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"' && field.empty() && !was_quoted) {
      quoted = was_quoted = true;
    } else if (c == ',' || c == '\n') {
      rows.back().push_back(field);
      field.clear();
      was_quoted = false;
      if (c == '\n') rows.emplace_back();
    } else if (c != '\r') {
      field += c;
    }
  }
  if (rows.back().empty()) rows.pop_back();
  return rows;
}

}  // namespace

TEST_CASE("hgad test --cache recomputes the features of an edited mask or image", "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_cache_key");
  const fs::path root = dir.path() / "data";
  write_dataset(root);
  // One test image as BMP, whose size does not depend on its pixels.
  fs::remove(root / "a/test/good/g1.png");
  write_bmp((root / "a/test/good/g1.bmp").string(), 1, false);
  const std::string data = root.string(), model = dir.file("model.hgad");
  Run r = run(dir, train_tiny(dir, data, model));
  INFO(r.err);
  REQUIRE(r.status == 0);
  const std::string test = "test --model '" + model + "' --data '" + data + "' --threads 2 --json ";
  const std::string cache = " --cache '" + dir.file("cache") + "'";
  REQUIRE(run(dir, test + "'" + dir.file("first.json") + "'" + cache).status == 0);

  // A mask moved elsewhere: the cached run must give what a run without the cache gives.
  write_mask_at((root / "b/ground_truth/dent/d0_mask.png").string(), 2);
  REQUIRE(run(dir, test + "'" + dir.file("mask_cached.json") + "'" + cache).status == 0);
  REQUIRE(run(dir, test + "'" + dir.file("mask_fresh.json") + "'").status == 0);
  const std::string fresh = slurp(dir.file("mask_fresh.json"));
  CHECK(fresh != slurp(dir.file("first.json")));  // the edit changes the pixel metrics
  CHECK(slurp(dir.file("mask_cached.json")) == fresh);

  // An image rewritten with other pixels (a bright square) and the same size.
  const auto before = fs::file_size(root / "a/test/good/g1.bmp");
  write_bmp((root / "a/test/good/g1.bmp").string(), 1, true);
  REQUIRE(fs::file_size(root / "a/test/good/g1.bmp") == before);
  REQUIRE(run(dir, test + "'" + dir.file("image_cached.json") + "'" + cache).status == 0);
  REQUIRE(run(dir, test + "'" + dir.file("image_fresh.json") + "'").status == 0);
  const std::string image_fresh = slurp(dir.file("image_fresh.json"));
  CHECK(image_fresh != fresh);
  CHECK(slurp(dir.file("image_cached.json")) == image_fresh);
}

TEST_CASE(
    "hgad train with neighbourhood = 3: the cache tells the averaged features apart and the "
    "model file records the window",
    "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_neighbourhood");
  const fs::path root = dir.path() / "data";
  write_dataset(root);
  std::ofstream(dir.file("k3.cfg")) << tiny_config << "neighbourhood = 3\n";
  const std::string cache = " --cache '" + dir.file("cache") + "'";
  auto train = [&](const std::string& cfg, const std::string& model, const std::string& extra) {
    const Run r =
        run(dir, "train --data '" + root.string() + "' --backbone '" + weights_dir() + "' --out '" +
                     dir.file(model) + "' --config '" + dir.file(cfg) + "' --threads 2" + extra);
    INFO(r.err);
    REQUIRE(r.status == 0);
  };
  std::ofstream(dir.file("k1.cfg")) << tiny_config;
  train("k1.cfg", "k1.hgad", cache);  // fills the cache with the features as they are
  train("k3.cfg", "k3_cached.hgad", cache);
  train("k3.cfg", "k3_fresh.hgad", "");
  CHECK(slurp(dir.file("k3_cached.hgad")) == slurp(dir.file("k3_fresh.hgad")));
  CHECK(slurp(dir.file("k3_cached.hgad")) != slurp(dir.file("k1.hgad")));
  const Run info = run(dir, "info '" + dir.file("k3_fresh.hgad") + "'");
  REQUIRE(info.status == 0);
  CHECK(info.out.find("neighbourhood = 3") != std::string::npos);
}

TEST_CASE("hgad predict gives images of one stem distinct heat maps and quotes scores.csv",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_predict_names");
  const std::string model = tiny_model_on_dataset(dir);
  const fs::path in = dir.path() / "in";
  const std::vector<std::string> images = {
      (in / "a/x.png").string(), (in / "b/x.png").string(), (in / "x_1.png").string(),
      (in / "we,ird \"name\".png").string(), (in / "two\nlines.png").string()};
  for (std::size_t i = 0; i < images.size(); ++i) write_image(images[i], unsigned(i), i == 1);
  std::string arguments = "predict --model '" + model + "' --out '" + dir.file("out") + "'";
  for (const auto& image : images) arguments += " '" + image + "'";
  Run r = run(dir, arguments);
  REQUIRE(r.status == 0);

  const auto rows = parse_csv(slurp(dir.file("out/scores.csv")));
  REQUIRE(rows.size() == images.size() + 1);
  CHECK(rows[0] == std::vector<std::string>{"image", "class", "score", "anomalous", "heatmap"});
  std::set<std::string> heatmaps;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const auto& row = rows[i + 1];
    REQUIRE(row.size() == 5);
    CHECK(row[0] == images[i]);
    CHECK(fs::exists(row[4]));
    heatmaps.insert(row[4]);
  }
  CHECK(heatmaps.size() == images.size());
  // The documented names: the first image of a stem keeps it, a later one takes the smallest
  // free number (x_1 is another image's stem).
  CHECK(fs::path(rows[1][4]).filename() == "x_heatmap.png");
  CHECK(fs::path(rows[2][4]).filename() == "x_2_heatmap.png");
  CHECK(fs::path(rows[3][4]).filename() == "x_1_heatmap.png");
  // b/x.png (a defect) and a/x.png (none) have different heat maps: neither overwrote the other.
  CHECK(hgad_test::read_bytes(rows[1][4]) != hgad_test::read_bytes(rows[2][4]));
}

TEST_CASE("hgad predict writes each image's line and heat map as it is scored, on the model's own "
          "colour scale",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_predict_stream");
  const std::string model = tiny_model_on_dataset(dir);
  const std::string normal = dir.file("in/normal.png"), odd = dir.file("in/odd.png");
  write_image(normal, 0, false);
  hgad::Tensor<float> noise({3, 64, 64});  // far from every training image: a high score
  hgad::Rng rng(7);
  for (hgad::Index i = 0; i < noise.numel(); ++i) noise.data()[i] = float(rng.uniform());
  hgad::save_png(odd, noise);

  // The heat map of an image is the same whatever else the call scores.
  Run r = run(dir, "predict --model '" + model + "' --out '" + dir.file("alone") + "' '" + normal + "'");
  REQUIRE(r.status == 0);
  r = run(dir, "predict --model '" + model + "' --out '" + dir.file("with") + "' '" + normal +
                   "' '" + odd + "'");
  REQUIRE(r.status == 0);
  CHECK(hgad_test::read_bytes(dir.file("alone/normal_heatmap.png")) ==
        hgad_test::read_bytes(dir.file("with/normal_heatmap.png")));

  // A file that is not an image stops the call at its turn: what came before it is out (its line
  // on standard output, its heat map), scores.csv is not written half.
  const std::string broken = dir.file("in/broken.png");
  std::ofstream(broken) << "not a png";
  r = run(dir, "predict --model '" + model + "' --out '" + dir.file("stopped") + "' '" + normal +
                   "' '" + broken + "' '" + odd + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "broken.png"));
  CHECK(contains(r.out, normal));
  CHECK_FALSE(contains(r.out, odd));
  CHECK(fs::exists(dir.file("stopped/normal_heatmap.png")));
  CHECK_FALSE(fs::exists(dir.file("stopped/odd_heatmap.png")));
  CHECK_FALSE(fs::exists(dir.file("stopped/scores.csv")));
}

TEST_CASE("hgad train refuses an --out it cannot write before training", "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_out_unwritable");
  write_dataset(dir.path() / "data");
  const std::string data = dir.file("data");
  // /proc takes no new file, whoever asks (root included): the run must stop before the features.
  if (fs::is_directory("/proc")) {
    Run r = run(dir, train_tiny(dir, data, "/proc/hgad_cli_test.hgad"));
    CHECK(r.status == 1);
    CHECK(contains(r.err, "--out: cannot write '/proc/hgad_cli_test.hgad'"));
    CHECK_FALSE(contains(r.err, "features"));
    CHECK_FALSE(contains(r.err, "training"));
  }
  // A folder that is a regular file.
  std::ofstream(dir.file("plain")) << "x";
  Run r = run(dir, train_tiny(dir, data, dir.file("plain") + "/model.hgad"));
  CHECK(r.status == 1);
  CHECK(contains(r.err, "plain' is not a folder"));
  CHECK_FALSE(contains(r.err, "training"));
  // A folder without write permission (meaningless for root, who may write anywhere).
  if (::geteuid() != 0) {
    fs::create_directories(dir.path() / "locked");
    fs::permissions(dir.path() / "locked", fs::perms::owner_read | fs::perms::owner_exec);
    r = run(dir, train_tiny(dir, data, dir.file("locked") + "/model.hgad"));
    fs::permissions(dir.path() / "locked", fs::perms::owner_all);
    CHECK(r.status == 1);
    CHECK(contains(r.err, "Permission denied"));
    CHECK_FALSE(contains(r.err, "training"));
  }
}

TEST_CASE("hgad train removes its temporary model file when SIGTERM comes during the write",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_sigterm");
  write_dataset(dir.path() / "data");
  std::ofstream(dir.file("tiny.cfg")) << tiny_config;
  const std::string model = dir.file("model.hgad"), err = dir.file("stderr.txt");
  const std::vector<std::string> arguments = {
      "hgad",  "train", "--data",   dir.file("data"),     "--backbone", weights_dir(),
      "--out", model,   "--config", dir.file("tiny.cfg"), "--threads",  "2"};
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const int out_fd = ::open(dir.file("stdout.txt").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int err_fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    std::vector<char*> argv;
    for (const auto& a : arguments) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(cli_path().c_str(), argv.data());
    ::_exit(127);
  }
  // The write is frozen half-way, deterministically: once the program has printed its first line
  // (after its up-front checks), its temporary file `<model>.tmp.<pid>` is made a FIFO with a
  // 4 KiB buffer that nobody drains, so the model's write blocks after 4 KiB. SIGTERM then.
  const std::string temporary = model + ".tmp." + std::to_string(child);
  int status = 0;
  bool exited = false, planted = false, writing = false;
  int reader = -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (!writing && !exited && std::chrono::steady_clock::now() < deadline) {
    exited = ::waitpid(child, &status, WNOHANG) == child;
    if (!planted && contains(slurp(err), "hgad train:")) {
      REQUIRE(::mkfifo(temporary.c_str(), 0600) == 0);
      reader = ::open(temporary.c_str(), O_RDONLY | O_NONBLOCK);
      REQUIRE(reader >= 0);
      ::fcntl(reader, F_SETPIPE_SZ, 4096);
      planted = true;
    }
    if (planted) {
      pollfd p{reader, POLLIN, 0};
      writing = ::poll(&p, 1, 10) == 1 && (p.revents & POLLIN);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  INFO(slurp(err));
  if (!exited) {
    ::kill(child, SIGTERM);
    REQUIRE(::waitpid(child, &status, 0) == child);
  }
  if (reader >= 0) ::close(reader);
  REQUIRE(writing);
  CHECK(WIFSIGNALED(status));
  CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM));
  CHECK_FALSE(fs::exists(fs::symlink_status(temporary)));
  CHECK_FALSE(fs::exists(model));
}

namespace {

/// The lines of `text`.
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

TEST_CASE("hgad decides with the threshold calibrated on the training normals: info reports it, "
          "predict writes the decision, test measures it, and an older model without one loads",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_threshold");
  write_dataset(dir.path() / "data");
  std::ofstream(dir.file("tiny.cfg")) << tiny_config << "threshold_quantile = 0.5\n";
  const std::string data = dir.file("data"), model = dir.file("model.hgad");
  Run r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                       model + "' --config '" + dir.file("tiny.cfg") + "' --threads 2");
  INFO(r.err);
  REQUIRE(r.status == 0);
  const hgad::HgadModel<float> trained = hgad::HgadModel<float>::load(model);
  REQUIRE(trained.calibration(0).has_threshold());

  r = run(dir, "info '" + model + "'");
  CHECK(r.status == 0);
  CHECK(contains(r.out, "threshold_quantile = 0.5"));
  CHECK(contains(r.out, "decision thresholds (threshold_quantile 0.5"));

  // predict: a decision column in scores.csv and on stdout, score > the scored class's threshold.
  const std::string out = dir.file("heat");
  r = run(dir, "predict --model '" + model + "' --out '" + out + "' --class a '" + data +
                   "/a/test/dent/d0.png' '" + data + "/a/train/good/t0.png'");
  REQUIRE(r.status == 0);
  const auto csv = lines_of(slurp((fs::path(out) / "scores.csv").string()));
  REQUIRE(csv.size() == 3);
  CHECK(csv[0] == "image,class,score,anomalous,heatmap");
  const auto printed = lines_of(r.out);
  REQUIRE(printed.size() == 2);
  for (std::size_t i = 1; i < 3; ++i) {
    const auto fields = hgad::detail::split_list(csv[i]);
    REQUIRE(fields.size() == 5);
    const double score = std::stod(fields[2]);
    CHECK(fields[3] == (score > trained.calibration(0).threshold ? "yes" : "no"));
    CHECK(contains(printed[i - 1], "\t" + fields[3] + "\ta\t"));
  }

  // test: precision, recall and F1 at the threshold beside F1-max, in the table and the JSON.
  const std::string json = dir.file("m.json");
  r = run(dir, "test --model '" + model + "' --data '" + data + "' --json '" + json + "'");
  CHECK(r.status == 0);
  CHECK(contains(r.out, "F1-max"));
  CHECK(contains(r.out, "F1@thr"));
  CHECK(contains(r.out, "prec@thr"));
  const std::string text = slurp(json);
  CHECK(contains(text, "\"image_f1_at_threshold\""));
  CHECK(contains(text, "\"image_precision_at_threshold\""));
  CHECK(contains(text, "\"threshold\": " ));
  // Every test image's score and decision, and the configuration as an object of typed values.
  std::size_t rows = 0;
  for (std::size_t at = text.find("\"score\": "); at != std::string::npos;
       at = text.find("\"score\": ", at + 1))
    ++rows;
  CHECK(rows == 8);  // two classes of two good and two defective test images
  for (const std::string c : {"a", "b"})
    for (const std::string image : {"good/g0", "good/g1", "dent/d0", "dent/d1"})
      CHECK(contains(text, "\"image\": \"" + data + "/" + c + "/test/" + image + ".png\""));
  CHECK(contains(text, "\"label\": 1"));
  CHECK((contains(text, "\"anomalous\": true") || contains(text, "\"anomalous\": false")));
  CHECK(contains(text, "\"config\": {"));
  CHECK(contains(text, "\"n_blocks\": 1,"));
  CHECK(contains(text, "\"threshold_quantile\": 0.5,"));
  CHECK(contains(text, "\"layers\": [\n"));
  CHECK_FALSE(contains(text, "# hgad model configuration"));

  // The thresholds are of the product criterion's scores; another criterion's have another scale:
  // no decisions, and a note that says why.
  const std::string likelihood_json = dir.file("likelihood.json");
  r = run(dir, "test --model '" + model + "' --data '" + data +
                   "' --criterion likelihood --json '" + likelihood_json + "'");
  CHECK(r.status == 0);
  CHECK(contains(r.out,
                 "thresholds hold for the product criterion's scores, not the likelihood "
                 "criterion's"));
  const std::string likelihood_text = slurp(likelihood_json);
  CHECK(contains(likelihood_text, "\"image_auroc\""));
  CHECK_FALSE(contains(likelihood_text, "\"anomalous\": true"));
  CHECK_FALSE(contains(likelihood_text, "\"anomalous\": false"));

  // A model file of an older hgad: no thresholds. It loads; info says they are missing, predict
  // scores with the decision '-' and a note, test reports the threshold metrics absent.
  hgad::Checkpoint old = trained.to_checkpoint();
  REQUIRE(old.erase("calibration.threshold"));
  const std::string old_model = dir.file("old.hgad");
  old.save(old_model);
  r = run(dir, "info '" + old_model + "'");
  CHECK(r.status == 0);
  CHECK(contains(r.out, "decision thresholds: missing"));
  r = run(dir, "predict --model '" + old_model + "' --out '" + dir.file("heat_old") + "' '" + data +
                   "/a/test/dent/d0.png'");
  CHECK(r.status == 0);
  CHECK(contains(r.err, "no decision threshold"));
  const auto old_csv = lines_of(slurp(dir.file("heat_old") + "/scores.csv"));
  REQUIRE(old_csv.size() == 2);
  CHECK(hgad::detail::split_list(old_csv[1]).at(3) == "-");
  r = run(dir, "test --model '" + old_model + "' --data '" + data + "'");
  CHECK(r.status == 0);
  CHECK(contains(r.out, "no decision threshold"));
}

TEST_CASE("hgad test on a data set without masks gives image metrics and says the pixel metrics "
          "are absent",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_no_masks");
  write_dataset(dir.path() / "data");
  std::ofstream(dir.file("tiny.cfg")) << tiny_config;
  const std::string data = dir.file("data"), model = dir.file("model.hgad");
  Run r = run(dir, "train --data '" + data + "' --backbone '" + weights_dir() + "' --out '" +
                       model + "' --config '" + dir.file("tiny.cfg") + "' --threads 2");
  REQUIRE(r.status == 0);
  // Image-level labels only for b: good/ and dent/ folders, no ground_truth.
  fs::remove_all(dir.path() / "data/b/ground_truth");
  const std::string json = dir.file("m.json");
  r = run(dir, "test --model '" + model + "' --data '" + data + "' --json '" + json + "'");
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  CHECK_FALSE(contains(r.err, "MaskMode"));
  CHECK(contains(r.out, "no ground_truth folder for b"));
  CHECK(contains(r.out, "pixel metrics"));
  const std::string text = slurp(json);
  const auto listed = text.find("\"classes_without_masks\"");
  REQUIRE(listed != std::string::npos);
  CHECK(text.substr(listed, text.find(']', listed) - listed).find("\"b\"") != std::string::npos);
  // b: the image AUROC is a number, the pixel AUROC and AUPRO null; a keeps its pixel metrics.
  const auto b_at = text.find("\"b\": {");
  REQUIRE(b_at != std::string::npos);
  const std::string b = text.substr(b_at, text.find('}', b_at) - b_at);
  CHECK_FALSE(contains(b, "\"image_auroc\": null"));
  CHECK(contains(b, "\"pixel_auroc\": null"));
  CHECK(contains(b, "\"aupro\": null"));
  const auto a_at = text.find("\"a\": {");
  REQUIRE(a_at != std::string::npos);
  CHECK_FALSE(contains(text.substr(a_at, text.find('}', a_at) - a_at), "\"pixel_auroc\": null"));

  // A class that has ground_truth but lacks one mask is still an error naming the mask.
  fs::remove(dir.path() / "data/a/ground_truth/dent/d1_mask.png");
  r = run(dir, "test --model '" + model + "' --data '" + data + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "d1_mask.png"));
}

TEST_CASE("hgad train refuses a configuration that needs more memory than there is, with the "
          "estimate",
          "[model][cli]") {
  REQUIRE_CLI();
  REQUIRE_WEIGHTS();
  hgad_test::TempDir dir("cli_memory");
  write_dataset(dir.path() / "data");
  std::string huge = tiny_config;
  const std::string one_block = "n_blocks = 1\n";
  REQUIRE(huge.find(one_block) != std::string::npos);
  huge.replace(huge.find(one_block), one_block.size(), "n_blocks = 100000\n");
  std::ofstream(dir.file("huge.cfg")) << huge;
  const std::string model = dir.file("model.hgad");
  const std::string common = "train --data '" + dir.file("data") + "' --backbone '" + weights_dir() +
                             "' --out '" + model + "'";
  Run r = run(dir, common + " --config '" + dir.file("huge.cfg") + "'");
  INFO(r.err);
  CHECK(r.status == 1);
  CHECK(contains(r.err, "n_blocks = 100000"));
  CHECK(contains(r.err, " GB"));
  CHECK(contains(r.err, "available"));
  CHECK_FALSE(contains(r.err, "features:"));  // refused before any image is read
  CHECK_FALSE(fs::exists(model));

  // A stated limit: the tiny configuration fits the machine but not 1 kB.
  std::ofstream(dir.file("tiny.cfg")) << tiny_config;
  r = run(dir, common + " --config '" + dir.file("tiny.cfg") + "' --max-memory 0.000001");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "--max-memory allows 1 kB"));
  CHECK(contains(r.err, "batch_size = 4"));
  CHECK(run(dir, common + " --max-memory lots").status == 2);
}

TEST_CASE("hgad info --keys lists every config key with its default and meaning, as the README "
          "does",
          "[model][cli]") {
  REQUIRE_CLI();
  hgad_test::TempDir dir("cli_keys");
  const Run r = run(dir, "info --keys");
  REQUIRE(r.status == 0);
  for (const auto& k : hgad::detail::config_key_meanings) {
    CHECK(contains(r.out, std::string("\n") + k.name));
    CHECK(contains(r.out, k.meaning));
  }
  CHECK(contains(r.out, "threshold_quantile = 0.99"));
  CHECK(contains(r.out, "n_blocks = 12"));
  // The README's key list is this output, verbatim.
  const std::string readme = slurp(std::string(HGAD_SOURCE_DIR) + "/README.md");
  CHECK(contains(readme, r.out));
  CHECK(run(dir, "info --keys x.hgad").status == 2);
}

}  // namespace cli_test
