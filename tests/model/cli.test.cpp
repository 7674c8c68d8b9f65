// The hgad command-line program on bad and good input. The program's path comes from the HGAD_CLI
// environment variable, which the ctest entry cli.bad_input (apps/CMakeLists.txt) sets; without it
// these cases skip.

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <hgad/io/image.hpp>
#include <hgad/io/npy.hpp>
#include <hgad/detail/text.hpp>
#include <hgad/model/config.hpp>
#include <hgad/model/hgad_model.hpp>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "io/temp_dir.hpp"

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

/// Runs `hgad <arguments>` with stdout and stderr captured in files of `dir`.
Run run(const hgad_test::TempDir& dir, const std::string& arguments) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string command =
      "'" + cli_path() + "' " + arguments + " >'" + out + "' 2>'" + err + "'";
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
  for (const std::string command : {"train", "test", "predict", "info", "embeddings"}) {
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
  r = run(dir, "train --data x --backbone y --out m --epochs 0");
  CHECK(r.status == 2);
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

TEST_CASE("hgad train --auto-group trains again with the classes its first model confuses",
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
  // The tiny model, trained long enough (40 passes of 3 steps) to tell the stripes apart.
  std::ofstream(dir.file("tiny.cfg"))
      << "image_size = 64\nmask_size = 32\nlayers = layer2\npos_dim = 8\nn_blocks = 1\n"
         "n_centers = 2\nmeta_epochs = 40\nsub_epochs = 1\nwarmup_meta_epochs = 1\n"
         "stage1_meta_epochs = 2\nbatch_size = 4\nlr = 0.002\n";
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
  std::string csv = "class,class_index,row,y,split\n";
  for (const std::string c : {"a", "b"}) {
    hgad::Tensor<float> x({4, 3});
    for (hgad::Index i = 0; i < x.numel(); ++i) x.data()[i] = float(i % 5);
    if (c == "b") x(1, 2) = std::numeric_limits<float>::quiet_NaN();
    hgad::save_npy(dir.file(c + "_X.npy"), x);
    hgad::save_npy_int64(dir.file(c + "_y.npy"), {0, 0, 0, 1});
    const std::string index = c == "a" ? "0" : "1";
    csv += c + "," + index + ",0,0,train\n" + c + "," + index + ",1,0,train\n" + c + "," + index + ",2,0,test\n" +
           c + "," + index + ",3,1,test\n";
  }
  std::ofstream(dir.file("unified_split_seed0.csv")) << csv;
  const std::string json = dir.file("out.json");
  const Run r = run(dir, "embeddings --data '" + dir.path().string() + "' --json '" + json + "'");
  CHECK(r.status == 1);
  CHECK(contains(r.err, "b_X.npy' row 1 column 2 is nan"));
  CHECK_FALSE(fs::exists(json));
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
  std::system(("bash -c \"" + script + "\"").c_str());
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
  CHECK(run(dir, "train --data x --backbone y --out m --device tpu").status == 2);
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
