#pragma once
/// \file
/// Loader for the golden vectors in `../shared/golden/` (format "hgad-golden-v1", see that folder's
/// README.md), shared by the tests.
///
///     auto golden = hgad::test::open_golden("hgad_golden_small.json");
///     if (!golden) return;                       // already WARNed: no json support or no file
///     hgad::Tensor<double> x = golden->tensor("input.x");          // (N, D), row-major
///     std::vector<std::int64_t> y = golden->index_tensor("input.labels");
///     double loss = golden->scalar("stage1.loss");
///     int D = golden->config_int("D");
///
/// Every tensor of the file is stored flat in row-major order; `tensor` returns it as a
/// Tensor<double> of the stored shape. Without nlohmann json (HGAD_HAVE_JSON undefined) or without
/// the file, `open_golden` WARNs and returns an empty optional, so a test skips by returning.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "hgad/tensor.hpp"

#ifdef HGAD_HAVE_JSON
#include <nlohmann/json.hpp>
#endif

namespace hgad::test {

/// The folder of the golden files, or "" when the build does not know the shared folder.
inline std::string golden_dir() {
#ifdef HGAD_SHARED_DIR
  return std::string(HGAD_SHARED_DIR) + "/golden";
#else
  return "";
#endif
}

/// One golden file, fully parsed into tensors, scalars and configuration values.
class GoldenFile {
 public:
  /// Reads and parses `path`; throws hgad::Error when the file is unreadable or malformed, or when
  /// the build has no json support.
  explicit GoldenFile(const std::string& path) : m_path(path) {
#ifdef HGAD_HAVE_JSON
    std::ifstream in(path);
    check(static_cast<bool>(in), "GoldenFile: cannot open ", path);
    nlohmann::json root;
    try {
      in >> root;
    } catch (const std::exception& e) {
      throw Error(detail::concat("GoldenFile: cannot parse ", path, ": ", e.what()));
    }
    check(root.value("format", std::string()) == "hgad-golden-v1", "GoldenFile: ", path,
          " is not in format hgad-golden-v1");
    for (const auto& [name, entry] : root.at("tensors").items()) {
      Entry e;
      std::vector<Index> dims;
      for (const auto& d : entry.at("shape")) dims.push_back(d.get<Index>());
      e.shape = Shape(dims);
      e.is_int = entry.at("dtype").get<std::string>() == "int64";
      const auto& data = entry.at("data");
      check(static_cast<Index>(data.size()) == e.shape.numel(), "GoldenFile: tensor ", name, " has ",
            data.size(), " values for shape ", e.shape.to_string());
      for (const auto& v : data) {
        if (e.is_int) {
          e.ints.push_back(v.get<std::int64_t>());
        } else {
          e.values.push_back(v.get<double>());
        }
      }
      m_tensors.emplace(name, std::move(e));
    }
    for (const auto& [name, value] : root.at("scalars").items()) read_value(m_scalars, m_strings, name, value);
    for (const auto& [name, value] : root.at("config").items()) {
      if (name == "train_sequence") {
        for (const auto& step : value) m_train_sequence.push_back(number_map(step));
      } else {
        read_value(m_config, m_config_strings, name, value);
        if (value.is_array()) {
          for (const auto& v : value) m_config_lists[name].push_back(v.get<double>());
        }
      }
    }
    if (root.contains("train_losses")) {
      for (const auto& step : root.at("train_losses")) m_train_losses.push_back(number_map(step));
    }
#else
    throw Error("GoldenFile: built without nlohmann json (HGAD_HAVE_JSON), cannot read " + path);
#endif
  }

  const std::string& path() const { return m_path; }

  bool has_tensor(const std::string& name) const { return m_tensors.count(name) != 0; }
  /// Names of every stored tensor, sorted.
  std::vector<std::string> tensor_names() const {
    std::vector<std::string> names;
    for (const auto& kv : m_tensors) names.push_back(kv.first);
    return names;
  }
  Shape shape(const std::string& name) const { return entry(name).shape; }

  /// A float64 tensor of the file as Tensor<double> with its stored shape (int64 tensors are
  /// converted too).
  Tensor<double> tensor(const std::string& name) const {
    const Entry& e = entry(name);
    if (!e.is_int) return Tensor<double>::from_vector(e.shape, e.values);
    std::vector<double> v(e.ints.begin(), e.ints.end());
    return Tensor<double>::from_vector(e.shape, v);
  }
  /// The same tensor converted to `Scalar`.
  template <class Scalar>
  Tensor<Scalar> tensor_as(const std::string& name) const {
    const Tensor<double> t = tensor(name);
    Tensor<Scalar> out(t.shape());
    for (Index i = 0; i < t.numel(); ++i) out.data()[i] = static_cast<Scalar>(t.data()[i]);
    return out;
  }
  /// An int64 tensor of the file (e.g. "input.labels"), flat.
  std::vector<std::int64_t> index_tensor(const std::string& name) const {
    const Entry& e = entry(name);
    check(e.is_int, "GoldenFile: tensor ", name, " of ", m_path, " is not int64");
    return e.ints;
  }

  bool has_scalar(const std::string& name) const { return m_scalars.count(name) != 0; }
  /// A numeric entry of "scalars", e.g. "stage1.loss".
  double scalar(const std::string& name) const { return lookup(m_scalars, name, "scalar"); }
  /// A list-of-strings entry of "scalars", e.g. "stage1.params_without_grad".
  std::vector<std::string> string_list(const std::string& name) const {
    const auto it = m_strings.find(name);
    check(it != m_strings.end(), "GoldenFile: no string list ", name, " in ", m_path);
    return it->second;
  }

  /// A numeric configuration value, e.g. "alpha", "D".
  double config_number(const std::string& name) const { return lookup(m_config, name, "config number"); }
  int config_int(const std::string& name) const { return static_cast<int>(config_number(name)); }
  /// A string configuration value, e.g. "clamp_mode".
  std::string config_string(const std::string& name) const {
    const auto it = m_config_strings.find(name);
    check(it != m_config_strings.end() && it->second.size() == 1, "GoldenFile: no config string ",
          name, " in ", m_path);
    return it->second.front();
  }
  /// A numeric list in the configuration, e.g. "betas".
  std::vector<double> config_list(const std::string& name) const {
    const auto it = m_config_lists.find(name);
    check(it != m_config_lists.end(), "GoldenFile: no config list ", name, " in ", m_path);
    return it->second;
  }
  /// config.train_sequence: one {"stage", "lr"} map per step.
  const std::vector<std::map<std::string, double>>& train_sequence() const { return m_train_sequence; }
  /// train_losses: one map of loss terms per step.
  const std::vector<std::map<std::string, double>>& train_losses() const { return m_train_losses; }

 private:
  struct Entry {
    Shape shape;
    bool is_int = false;
    std::vector<double> values;
    std::vector<std::int64_t> ints;
  };

  const Entry& entry(const std::string& name) const {
    const auto it = m_tensors.find(name);
    check(it != m_tensors.end(), "GoldenFile: no tensor ", name, " in ", m_path);
    return it->second;
  }
  double lookup(const std::map<std::string, double>& map, const std::string& name, const char* what) const {
    const auto it = map.find(name);
    check(it != map.end(), "GoldenFile: no ", what, " ", name, " in ", m_path);
    return it->second;
  }

#ifdef HGAD_HAVE_JSON
  static void read_value(std::map<std::string, double>& numbers,
                         std::map<std::string, std::vector<std::string>>& strings, const std::string& name,
                         const nlohmann::json& value) {
    if (value.is_number()) {
      numbers[name] = value.get<double>();
    } else if (value.is_string()) {
      strings[name] = {value.get<std::string>()};
    } else if (value.is_array()) {
      auto& list = strings[name];
      for (const auto& v : value) {
        if (v.is_string()) list.push_back(v.get<std::string>());
      }
    }
  }
  static std::map<std::string, double> number_map(const nlohmann::json& object) {
    std::map<std::string, double> out;
    for (const auto& [k, v] : object.items()) {
      if (v.is_number()) out[k] = v.get<double>();
    }
    return out;
  }
#endif

  std::string m_path;
  std::map<std::string, Entry> m_tensors;
  std::map<std::string, double> m_scalars;
  std::map<std::string, std::vector<std::string>> m_strings;
  std::map<std::string, double> m_config;
  std::map<std::string, std::vector<std::string>> m_config_strings;
  std::map<std::string, std::vector<double>> m_config_lists;
  std::vector<std::map<std::string, double>> m_train_sequence;
  std::vector<std::map<std::string, double>> m_train_losses;
};

/// Opens `golden_dir()/file_name`; WARNs and returns an empty optional when the build has no json
/// support or the file is absent, so the calling test skips with `if (!golden) return;`.
inline std::optional<GoldenFile> open_golden(const std::string& file_name) {
#ifndef HGAD_HAVE_JSON
  WARN("skipped: built without nlohmann json (HGAD_HAVE_JSON), cannot read golden file " << file_name);
  return std::nullopt;
#else
  const std::string dir = golden_dir();
  const std::string path = dir + "/" + file_name;
  if (dir.empty() || !std::ifstream(path)) {
    WARN("skipped: golden file " << path << " is absent");
    return std::nullopt;
  }
  return GoldenFile(path);
#endif
}

/// max_i |a_i - b_i| / max(max_i |b_i|, tiny): the golden README's relative error of a tensor.
inline double max_rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  check(a.size() == b.size(), "max_rel_error: sizes ", a.size(), " and ", b.size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - b[i]);
    diff = (d > diff || d != d) ? d : diff;
    scale = std::max(scale, std::abs(b[i]));
  }
  return diff / std::max(scale, 1e-300);
}

/// The same for two tensors of any scalar type, compared in double; NaN gives NaN (fails a `<`).
template <class A, class B>
double max_rel_error(const Tensor<A>& a, const Tensor<B>& b) {
  check(a.numel() == b.numel(), "max_rel_error: ", a.shape().to_string(), " vs ", b.shape().to_string());
  const auto va = a.to_vector();
  const auto vb = b.to_vector();
  return max_rel_error(std::vector<double>(va.begin(), va.end()), std::vector<double>(vb.begin(), vb.end()));
}

}  // namespace hgad::test
