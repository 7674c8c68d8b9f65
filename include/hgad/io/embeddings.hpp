#pragma once
/// \file
/// Reading a folder of precomputed image embeddings with a unified train/test split: the protocol
/// of `../shared/datasets/mvtec-embeddings-resnet18` (ADBench's ResNet-18 MVTec embeddings), usable
/// for any embeddings laid out the same way.
///
/// Layout:
///
///     <class>_X.npy              (N_c, D) float32 or float64, one embedding per row
///     <class>_y.npy              (N_c,) int64, 0 = normal, 1 = anomaly
///     unified_split_seed0.csv    header `class,class_index,row,y,split`, one line per row of every
///                                <class>_X.npy; split is `train` or `test`
///
/// The CSV is the authority: it names the classes and their indices (which must be 0 .. K-1), and
/// every row of every class must appear in it exactly once with the label its `_y.npy` holds. A
/// training row must be normal (the protocol never trains on an anomaly).
///
///     auto data = hgad::load_embedding_dataset<float>("../shared/datasets/mvtec-embeddings-resnet18");
///     data.classes[0].name;        // "bottle"
///     data.classes[0].train;       // (183, 512)
///     data.classes[0].test_labels; // 46 zeros and 63 ones, in the CSV's order

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../detail/check.hpp"
#include "../tensor.hpp"
#include "npy.hpp"

namespace hgad {

/// One class of an embedding dataset, split into training normals and test rows.
template <class Scalar>
struct EmbeddingClass {
  std::string name;
  Index class_index = 0;
  Tensor<Scalar> train;                     ///< (n_train, D), normal rows only
  Tensor<Scalar> test;                      ///< (n_test, D)
  std::vector<std::int64_t> test_labels;    ///< (n_test,) 0 normal, 1 anomaly
  std::vector<std::int64_t> train_rows;     ///< row indices into <class>_X.npy
  std::vector<std::int64_t> test_rows;
};

/// All classes of an embedding dataset, in class-index order, with one embedding dimension.
template <class Scalar>
struct EmbeddingDataset {
  std::vector<EmbeddingClass<Scalar>> classes;
  Index dim = 0;

  std::vector<std::string> class_names() const {
    std::vector<std::string> names;
    for (const auto& c : classes) names.push_back(c.name);
    return names;
  }
};

/// Name of the split file read by load_embedding_dataset.
inline constexpr const char* embedding_split_file = "unified_split_seed0.csv";

/// Loads an embedding folder (see the file comment). Every inconsistency is an hgad::Error naming
/// the file and, for the CSV, the line: a missing file, a malformed line, a class index that is
/// not 0 .. K-1, a row out of range or listed twice or not at all, a label that disagrees with
/// `_y.npy`, an anomaly in the training split, a class without training rows, or classes whose
/// embedding dimensions differ.
template <class Scalar>
EmbeddingDataset<Scalar> load_embedding_dataset(const std::string& directory) {
  namespace fs = std::filesystem;
  check(fs::is_directory(directory), "embeddings: '", directory, "' is not a directory");
  const fs::path csv_path = fs::path(directory) / embedding_split_file;
  std::ifstream csv(csv_path);
  check(static_cast<bool>(csv), "embeddings: cannot open the split file '", csv_path.string(), "'");

  struct Row {
    std::int64_t row;
    std::int64_t y;
    bool train;
    int line;
  };
  std::map<std::int64_t, std::string> index_to_name;
  std::map<std::string, std::int64_t> name_to_index;
  std::map<std::string, std::vector<Row>> rows;

  std::string line;
  int line_number = 0;
  while (std::getline(csv, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string where = csv_path.string() + " line " + std::to_string(line_number);
    if (line_number == 1) {
      check(line == "class,class_index,row,y,split", "embeddings: ", where,
            ": expected the header 'class,class_index,row,y,split', got '", line, "'");
      continue;
    }
    if (line.empty()) continue;
    std::vector<std::string> fields;
    std::string field;
    std::istringstream in(line);
    while (std::getline(in, field, ',')) fields.push_back(field);
    check(fields.size() == 5, "embeddings: ", where, ": expected 5 comma-separated fields, got ", fields.size(),
          " in '", line, "'");
    const std::string& name = fields[0];
    check(!name.empty() && name.find('/') == std::string::npos && name.find('\\') == std::string::npos,
          "embeddings: ", where, ": invalid class name '", name, "'");
    auto integer = [&](const std::string& text, const char* what) {
      std::int64_t v = 0;
      std::istringstream s(text);
      check(static_cast<bool>(s >> v) && s.peek() == std::char_traits<char>::eof() && v >= 0, "embeddings: ", where,
            ": ", what, " '", text, "' is not a non-negative integer");
      return v;
    };
    const std::int64_t class_index = integer(fields[1], "class_index");
    const std::int64_t row = integer(fields[2], "row");
    const std::int64_t y = integer(fields[3], "y");
    check(y == 0 || y == 1, "embeddings: ", where, ": y must be 0 or 1, got ", y);
    check(fields[4] == "train" || fields[4] == "test", "embeddings: ", where,
          ": split must be 'train' or 'test', got '", fields[4], "'");
    const auto known_name = name_to_index.find(name);
    if (known_name == name_to_index.end()) {
      const auto known_index = index_to_name.find(class_index);
      check(known_index == index_to_name.end(), "embeddings: ", where, ": class index ", class_index,
            " is given to both '", known_index == index_to_name.end() ? "" : known_index->second, "' and '", name, "'");
      name_to_index[name] = class_index;
      index_to_name[class_index] = name;
    } else {
      check(known_name->second == class_index, "embeddings: ", where, ": class '", name, "' has index ", class_index,
            " here but ", known_name->second, " earlier");
    }
    rows[name].push_back(Row{row, y, fields[4] == "train", line_number});
  }
  check(line_number >= 1, "embeddings: the split file '", csv_path.string(), "' is empty");
  check(!index_to_name.empty(), "embeddings: the split file '", csv_path.string(), "' lists no rows");
  {
    std::int64_t expected = 0;
    for (const auto& [index, name] : index_to_name) {
      check(index == expected, "embeddings: ", csv_path.string(), ": class indices must be 0 .. K-1; class '", name,
            "' has index ", index, " where ", expected, " was expected");
      ++expected;
    }
  }

  EmbeddingDataset<Scalar> data;
  for (const auto& [index, name] : index_to_name) {
    const fs::path x_path = fs::path(directory) / (name + "_X.npy");
    const fs::path y_path = fs::path(directory) / (name + "_y.npy");
    check(fs::exists(x_path), "embeddings: class '", name, "' is in the split file but '", x_path.string(),
          "' does not exist");
    check(fs::exists(y_path), "embeddings: class '", name, "' is in the split file but '", y_path.string(),
          "' does not exist");
    const Tensor<Scalar> x = load_npy<Scalar>(x_path.string());
    const std::vector<std::int64_t> labels = load_npy_int64(y_path.string());
    check(x.rank() == 2 && x.dim(0) >= 1 && x.dim(1) >= 1, "embeddings: '", x_path.string(),
          "' must hold an (N, D) matrix, got shape ", x.shape());
    const Index n = x.dim(0), dim = x.dim(1);
    check(static_cast<Index>(labels.size()) == n, "embeddings: '", y_path.string(), "' holds ", labels.size(),
          " labels for the ", n, " rows of '", x_path.string(), "'");
    if (data.dim == 0) data.dim = dim;
    check(dim == data.dim, "embeddings: '", x_path.string(), "' has dimension ", dim, " but earlier classes have ",
          data.dim);
    for (Index i = 0; i < n * dim; ++i)
      check(std::isfinite(x.data()[i]), "embeddings: '", x_path.string(), "' row ", i / dim, " column ", i % dim,
            " is ", x.data()[i], " (every value must be finite)");

    const std::vector<Row>& class_rows = rows[name];
    std::vector<int> listed(static_cast<std::size_t>(n), 0);
    EmbeddingClass<Scalar> c;
    c.name = name;
    c.class_index = static_cast<Index>(index);
    for (const Row& r : class_rows) {
      const std::string where = csv_path.string() + " line " + std::to_string(r.line);
      check(r.row < n, "embeddings: ", where, ": row ", r.row, " of class '", name, "' is out of range (",
            x_path.string(), " has ", n, " rows)");
      check(listed[static_cast<std::size_t>(r.row)]++ == 0, "embeddings: ", where, ": row ", r.row, " of class '",
            name, "' is listed twice");
      check(labels[static_cast<std::size_t>(r.row)] == r.y, "embeddings: ", where, ": y = ", r.y, " for row ", r.row,
            " of class '", name, "', but '", y_path.string(), "' says ", labels[static_cast<std::size_t>(r.row)]);
      check(!r.train || r.y == 0, "embeddings: ", where, ": row ", r.row, " of class '", name,
            "' is an anomaly in the training split; the protocol trains on normal rows only");
      (r.train ? c.train_rows : c.test_rows).push_back(r.row);
      if (!r.train) c.test_labels.push_back(r.y);
    }
    for (Index i = 0; i < n; ++i)
      check(listed[static_cast<std::size_t>(i)] == 1, "embeddings: row ", i, " of class '", name,
            "' is not listed in ", csv_path.string());
    check(!c.train_rows.empty(), "embeddings: class '", name, "' has no training rows");
    auto gather = [&](const std::vector<std::int64_t>& which) {
      Tensor<Scalar> out({static_cast<Index>(which.size()), dim});
      for (std::size_t i = 0; i < which.size(); ++i)
        std::copy(x.data() + which[i] * dim, x.data() + (which[i] + 1) * dim, out.data() + static_cast<Index>(i) * dim);
      return out;
    };
    c.train = gather(c.train_rows);
    c.test = gather(c.test_rows);
    data.classes.push_back(std::move(c));
  }
  return data;
}

}  // namespace hgad
