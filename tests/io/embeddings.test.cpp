#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <limits>
#include <hgad/io/embeddings.hpp>
#include <hgad/io/npy.hpp>
#include <string>

#include "io/temp_dir.hpp"

namespace embeddings_test {

namespace {

/// Two classes "a" (4 rows) and "b" (3 rows) in 2-D; row r of class c holds (10 c + r, -r).
void write_dataset(const hgad_test::TempDir& dir, const std::string& csv) {
  for (int c = 0; c < 2; ++c) {
    const std::string name = c == 0 ? "a" : "b";
    const hgad::Index n = c == 0 ? 4 : 3;
    hgad::Tensor<float> x({n, 2});
    std::vector<std::int64_t> y;
    for (hgad::Index r = 0; r < n; ++r) {
      x(r, 0) = float(10 * c + r);
      x(r, 1) = float(-r);
      y.push_back(r == n - 1 ? 1 : 0);
    }
    hgad::save_npy(dir.file(name + "_X.npy"), x);
    hgad::save_npy_int64(dir.file(name + "_y.npy"), y);
  }
  std::ofstream(dir.file("unified_split_seed0.csv")) << csv;
}

const std::string good_csv =
    "class,class_index,row,y,split\n"
    "a,0,0,0,train\na,0,1,0,test\na,0,2,0,train\na,0,3,1,test\n"
    "b,1,0,0,train\nb,1,1,0,test\nb,1,2,1,test\n";

std::string load_error(const hgad_test::TempDir& dir) {
  try {
    hgad::load_embedding_dataset<float>(dir.path().string());
  } catch (const hgad::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("Embedding dataset reader splits rows as the CSV says", "[io]") {
  hgad_test::TempDir dir("embeddings");
  write_dataset(dir, good_csv);
  const auto data = hgad::load_embedding_dataset<double>(dir.path().string());
  REQUIRE(data.classes.size() == 2);
  CHECK(data.dim == 2);
  CHECK(data.class_names() == std::vector<std::string>{"a", "b"});
  const auto& a = data.classes[0];
  CHECK(a.class_index == 0);
  CHECK(a.train_rows == std::vector<std::int64_t>{0, 2});
  CHECK(a.test_rows == std::vector<std::int64_t>{1, 3});
  CHECK(a.test_labels == std::vector<std::int64_t>{0, 1});
  REQUIRE(a.train.shape() == hgad::Shape{2, 2});
  CHECK(a.train(1, 0) == 2.0);
  CHECK(a.train(1, 1) == -2.0);
  CHECK(a.test(1, 0) == 3.0);
  const auto& b = data.classes[1];
  CHECK(b.train.shape() == hgad::Shape{1, 2});
  CHECK(b.train(0, 0) == 10.0);
  CHECK(b.test_labels == std::vector<std::int64_t>{0, 1});
}

TEST_CASE("Embedding dataset reader rejects inconsistent folders with a clear message", "[io]") {
  auto error_for = [](const std::string& csv) {
    hgad_test::TempDir dir("embeddings_bad");
    write_dataset(dir, csv);
    return load_error(dir);
  };
  const std::string header = "class,class_index,row,y,split\n";
  const std::string b_rows = "b,1,0,0,train\nb,1,1,0,test\nb,1,2,1,test\n";
  CHECK(error_for("class,row\n" + b_rows).find("expected the header") != std::string::npos);
  CHECK(error_for(header + "a,0,0,0,train\na,0,1,0,test\na,0,2,0,train\n" + b_rows)
            .find("row 3 of class 'a'") != std::string::npos);
  CHECK(error_for(header +
                  "a,0,0,0,train\na,0,0,0,test\na,0,1,0,test\na,0,2,0,train\na,0,3,1,test\n" +
                  b_rows)
            .find("listed twice") != std::string::npos);
  CHECK(error_for(header + "a,0,0,0,train\na,0,1,0,test\na,0,2,0,train\na,0,3,1,train\n" + b_rows)
            .find("anomaly in the training split") != std::string::npos);
  CHECK(error_for(header + "a,0,0,1,train\na,0,1,0,test\na,0,2,0,train\na,0,3,1,test\n" + b_rows)
            .find("says 0") != std::string::npos);
  CHECK(error_for(header + "a,0,0,0,train\na,0,1,0,test\na,0,2,0,train\na,0,9,1,test\n" + b_rows)
            .find("out of range") != std::string::npos);
  CHECK(error_for(header +
                  "a,0,0,0,train\na,0,1,0,test\na,0,2,0,train\na,0,3,1,test\nb,2,0,0,train\n")
            .find("0 .. K-1") != std::string::npos);
  CHECK(error_for(header + "a,0,0,0,train,x\n").find("line 2") != std::string::npos);
  CHECK(error_for(header + "a,0,0,0,valid\n").find("'train' or 'test'") != std::string::npos);
  CHECK(error_for(header +
                  "a,0,0,0,train\na,0,1,0,test\na,0,2,0,train\na,0,3,1,test\nc,1,0,0,train\n")
            .find("c_X.npy") != std::string::npos);

  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    hgad_test::TempDir dir("embeddings_nan");
    write_dataset(dir, good_csv);
    hgad::Tensor<float> x = hgad::load_npy<float>(dir.file("b_X.npy"));
    x(2, 1) = bad;
    hgad::save_npy(dir.file("b_X.npy"), x);
    const std::string e = load_error(dir);
    CHECK(e.find("b_X.npy' row 2 column 1") != std::string::npos);
    CHECK(e.find("finite") != std::string::npos);
  }

  hgad_test::TempDir empty("embeddings_none");
  CHECK(load_error(empty).find("unified_split_seed0.csv") != std::string::npos);
  CHECK_THROWS_AS(hgad::load_embedding_dataset<float>(empty.file("missing")), hgad::Error);
}

TEST_CASE("Embedding dataset reader reads the shared MVTec embeddings", "[io]") {
  const std::string dir = std::string(HGAD_SHARED_DIR) + "/datasets/mvtec-embeddings-resnet18";
  if (!std::filesystem::exists(dir)) {
    WARN("skipped: " << dir << " is absent");
    return;
  }
  const auto data = hgad::load_embedding_dataset<float>(dir);
  REQUIRE(data.classes.size() == 15);
  CHECK(data.dim == 512);
  CHECK(data.classes[0].name == "bottle");
  CHECK(data.classes[14].name == "zipper");
  std::size_t n_train = 0, n_test = 0;
  for (const auto& c : data.classes) {
    n_train += c.train_rows.size();
    n_test += c.test_rows.size();
  }
  CHECK(n_train == 3278);
  CHECK(n_test == 2076);
  CHECK(data.classes[0].train.dim(0) == 183);
  CHECK(data.classes[0].test.dim(0) == 109);
}

}  // namespace embeddings_test
