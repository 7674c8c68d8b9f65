#pragma once
/// \file
/// Reading and writing NumPy `.npy` files: format versions 1.0, 2.0 and 3.0, dtypes `<f4`, `<f8`
/// (into Tensor<float> or Tensor<double>) and `<i8` (integer labels), C order only.
///
///     auto w = hgad::load_npy<float>("conv1.weight.npy");      // Tensor<float> (64, 3, 7, 7)
///     hgad::save_npy("features.npy", w);                         // v1.0, '<f4'
///     std::vector<std::int64_t> y = hgad::load_npy_int64("labels.npy");
///
/// Format (numpy/lib/format.py, NEP 1): the magic `\x93NUMPY`, one byte major and one byte minor
/// version, the header length (uint16 little-endian for 1.0, uint32 for 2.0 and 3.0), then an ASCII
/// (3.0: UTF-8) Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`
/// padded with spaces and a final newline; the raw elements follow in C order.
///
/// Every malformed input -- a bad magic string, an unknown version, a truncated header or data, a
/// header that is not such a dict, an unsupported dtype, Fortran order, a shape whose byte count
/// disagrees with the file size -- throws hgad::Error naming the file and the problem. The parser
/// never reads outside the given bytes (it is fuzzed by tests/fuzz/fuzz_npy.cpp).

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../detail/check.hpp"
#include "../tensor.hpp"
#include "detail/file.hpp"

namespace hgad {

/// Element types the reader understands.
enum class NpyDtype {
  float32,  ///< '<f4'
  float64,  ///< '<f8'
  int64,    ///< '<i8'
};

/// The numpy `descr` string of a dtype: "<f4", "<f8" or "<i8".
inline const char* to_string(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::float32:
      return "<f4";
    case NpyDtype::float64:
      return "<f8";
    case NpyDtype::int64:
      return "<i8";
  }
  return "?";
}

/// Bytes per element of a dtype.
inline std::size_t item_size(NpyDtype dtype) { return dtype == NpyDtype::float32 ? 4 : 8; }

/// The parsed and validated header of a `.npy` file.
struct NpyHeader {
  int major_version = 1;
  int minor_version = 0;
  NpyDtype dtype = NpyDtype::float32;
  bool fortran_order =
      false;                 ///< always false after validation; kept for callers that print headers
  std::vector<Index> shape;  ///< empty for a 0-d array (one element)
  std::size_t data_offset = 0;  ///< bytes from the start of the file to the first element

  /// Number of elements: the product of `shape` (1 for a 0-d array).
  Index numel() const {
    Index n = 1;
    for (Index d : shape)
      if (d == 0) return 0;
    for (Index d : shape) n *= d;
    return n;
  }
  /// Bytes of element data the file holds after the header.
  std::size_t data_bytes() const { return static_cast<std::size_t>(numel()) * item_size(dtype); }
  /// "(3, 224, 224)"; "(5,)" for rank 1; "()" for a 0-d array.
  std::string shape_string() const {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
      if (i) s += ", ";
      s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
  }
};

namespace detail::npy {

/// The six magic bytes every .npy file starts with.
inline constexpr unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

inline bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

/// A recursive-descent reader of the header dict; every accessor is bounds-checked.
class NpyDictParser {
 public:
  NpyDictParser(const char* text, std::size_t size, const std::string& name)
      : m_text(text), m_size(size), m_name(name) {}

  NpyHeader parse() {
    NpyHeader header;
    bool have_descr = false, have_order = false, have_shape = false;
    skip_space();
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') {
        ++m_pos;
        break;
      }
      const std::string key = parse_string();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        fail_if(have_descr, "the key 'descr' appears twice");
        have_descr = true;
        const std::string descr = parse_string();
        header.dtype = dtype_of(descr);
      } else if (key == "fortran_order") {
        fail_if(have_order, "the key 'fortran_order' appears twice");
        have_order = true;
        header.fortran_order = parse_bool();
      } else if (key == "shape") {
        fail_if(have_shape, "the key 'shape' appears twice");
        have_shape = true;
        header.shape = parse_shape();
      } else {
        fail("unexpected key '" + key + "' in the header (expected descr, fortran_order, shape)");
      }
      skip_space();
      const char c = peek();
      if (c == ',') {
        ++m_pos;
      } else if (c == '}') {
        ++m_pos;
        break;
      } else {
        fail_at("expected ',' or '}'");
      }
    }
    skip_space();
    fail_if(m_pos != m_size, "unexpected text after the header dict at byte ", m_pos,
            " of the header");
    fail_if(!have_descr, "the header has no 'descr' key");
    fail_if(!have_order, "the header has no 'fortran_order' key");
    fail_if(!have_shape, "the header has no 'shape' key");
    fail_if(
        header.fortran_order,
        "Fortran-order arrays are not supported (save with C order, e.g. np.ascontiguousarray)");
    return header;
  }

 private:
  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw Error(concat("npy: '", m_name, "': ", std::forward<Parts>(parts)...));
  }
  template <class... Parts>
  void fail_if(bool condition, Parts&&... parts) const {
    if (condition) fail(std::forward<Parts>(parts)...);
  }
  [[noreturn]] void fail_at(const char* what) const {
    if (m_pos >= m_size) fail("malformed header: ", what, " but the header ended");
    fail("malformed header: ", what, " at byte ", m_pos, " of the header, found '",
         printable(m_text[m_pos]), "'");
  }
  static std::string printable(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string(1, c);
    static const char digits[] = "0123456789abcdef";
    return std::string("\\x") + digits[u >> 4] + digits[u & 15];
  }

  char peek() const { return m_pos < m_size ? m_text[m_pos] : '\0'; }
  void expect(char c) {
    if (m_pos >= m_size || m_text[m_pos] != c)
      fail_at((std::string("expected '") + c + "'").c_str());
    ++m_pos;
  }
  void skip_space() {
    while (m_pos < m_size) {
      const char c = m_text[m_pos];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++m_pos;
    }
  }

  std::string parse_string() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail_at("expected a quoted string");
    ++m_pos;
    std::string out;
    while (m_pos < m_size && m_text[m_pos] != quote) {
      fail_if(m_text[m_pos] == '\\',
              "malformed header: escape sequences in strings are not supported");
      fail_if(out.size() >= 64, "malformed header: a string longer than 64 characters");
      out += m_text[m_pos++];
    }
    if (m_pos >= m_size) fail("malformed header: an unterminated string");
    ++m_pos;
    return out;
  }

  bool parse_bool() {
    if (match_word("True")) return true;
    if (match_word("False")) return false;
    fail_at("expected True or False");
  }
  bool match_word(const char* word) {
    const std::size_t n = std::strlen(word);
    if (m_size - m_pos >= n && std::memcmp(m_text + m_pos, word, n) == 0) {
      m_pos += n;
      return true;
    }
    return false;
  }

  /// A tuple of non-negative integers: "()", "(5,)", "(3, 4)", "(3, 4,)"; Python 2's "3L" is
  /// accepted.
  std::vector<Index> parse_shape() {
    // 2^48 elements bounds every dimension far above any real file and keeps products exact.
    constexpr Index max_dim = Index(1) << 48;
    std::vector<Index> shape;
    expect('(');
    skip_space();
    if (peek() == ')') {
      ++m_pos;
      return shape;
    }
    for (;;) {
      skip_space();
      fail_if(shape.size() >= 32, "malformed header: a shape with more than 32 dimensions");
      if (peek() < '0' || peek() > '9') fail_at("expected a non-negative integer in 'shape'");
      Index value = 0;
      while (peek() >= '0' && peek() <= '9') {
        value = value * 10 + (peek() - '0');
        fail_if(value > max_dim, "dimension ", shape.size(), " of 'shape' exceeds 2^48");
        ++m_pos;
      }
      if (peek() == 'L') ++m_pos;
      shape.push_back(value);
      skip_space();
      if (peek() == ',') {
        ++m_pos;
        skip_space();
        if (peek() == ')') {
          ++m_pos;
          break;
        }
      } else if (peek() == ')') {
        ++m_pos;
        break;
      } else {
        fail_at("expected ',' or ')' in 'shape'");
      }
    }
    // 2^56 elements of 8 bytes stay below 2^63 bytes, so numel() and data_bytes() cannot overflow.
    constexpr Index max_numel = Index(1) << 56;
    Index numel = 1;
    for (Index d : shape) {
      if (d == 0) return shape;
      fail_if(numel > max_numel / d, "shape with more than 2^56 elements");
      numel *= d;
    }
    return shape;
  }

  NpyDtype dtype_of(const std::string& descr) const {
    if (descr == "<f4") return NpyDtype::float32;
    if (descr == "<f8") return NpyDtype::float64;
    if (descr == "<i8") return NpyDtype::int64;
    if (descr == ">f4" || descr == ">f8" || descr == ">i8")
      fail("big-endian dtype '", descr, "' is not supported (convert with arr.astype('<",
           descr.substr(1), "'))");
    fail("unsupported dtype '", descr, "' (supported: '<f4', '<f8', '<i8')");
  }

  const char* m_text;
  std::size_t m_size;
  const std::string& m_name;
  std::size_t m_pos = 0;
};

/// Parses the prefix and header from the first `available` bytes of a file of `file_size` bytes
/// and checks that the data that follows has exactly the size the shape and dtype require.
inline NpyHeader parse_npy_header(const std::uint8_t* bytes, std::size_t available,
                                  std::size_t file_size, const std::string& name) {
  const auto fail = [&](auto&&... parts) -> void {
    throw Error(concat("npy: '", name, "': ", parts...));
  };
  if (available < 8) fail("file too short (", file_size, " bytes) for the 8-byte .npy prefix");
  if (std::memcmp(bytes, npy_magic, 6) != 0) fail("bad magic string: not a .npy file");
  const int major = bytes[6], minor = bytes[7];
  if (major < 1 || major > 3 || minor != 0)
    fail("unsupported format version ", major, ".", minor, " (supported: 1.0, 2.0, 3.0)");
  const std::size_t prefix = major == 1 ? 10 : 12;
  if (available < prefix)
    fail("file too short (", file_size, " bytes) for the ", prefix, "-byte version ", major,
         ".0 prefix");
  std::size_t header_length = std::size_t(bytes[8]) | (std::size_t(bytes[9]) << 8);
  if (major > 1) header_length |= (std::size_t(bytes[10]) << 16) | (std::size_t(bytes[11]) << 24);
  if (header_length > available - prefix)
    fail("truncated header: the prefix announces ", header_length, " header bytes but only ",
         available - prefix, " follow");
  NpyDictParser parser(reinterpret_cast<const char*>(bytes + prefix), header_length, name);
  NpyHeader header = parser.parse();
  header.major_version = major;
  header.minor_version = minor;
  header.data_offset = prefix + header_length;
  const std::size_t found = file_size - header.data_offset;
  const std::size_t expected = header.data_bytes();
  if (found < expected)
    fail("truncated data: shape ", header.shape_string(), " of ", to_string(header.dtype),
         " needs ", expected, " bytes but only ", found, " follow the header");
  if (found > expected)
    fail("shape ", header.shape_string(), " of ", to_string(header.dtype), " needs ", expected,
         " bytes but ", found, " follow the header (", found - expected, " trailing bytes)");
  return header;
}

template <class T>
T read_little_endian(const std::uint8_t* p) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "read_little_endian: 4- or 8-byte types");
  std::uint8_t buffer[sizeof(T)];
  if (host_is_little_endian()) {
    std::memcpy(buffer, p, sizeof(T));
  } else {
    for (std::size_t i = 0; i < sizeof(T); ++i) buffer[i] = p[sizeof(T) - 1 - i];
  }
  T value;
  std::memcpy(&value, buffer, sizeof(T));
  return value;
}

template <class T>
void append_little_endian(std::vector<std::uint8_t>& out, T value) {
  std::uint8_t buffer[sizeof(T)];
  std::memcpy(buffer, &value, sizeof(T));
  if (!host_is_little_endian())
    for (std::size_t i = 0; i < sizeof(T) / 2; ++i) std::swap(buffer[i], buffer[sizeof(T) - 1 - i]);
  out.insert(out.end(), buffer, buffer + sizeof(T));
}

/// The bytes of a version 1.0 .npy file: the header padded with spaces and a newline so that the
/// data starts at a multiple of 64 bytes (numpy >= 1.14 pads to 64).
inline std::vector<std::uint8_t> npy_prefix_and_header(NpyDtype dtype,
                                                       const std::vector<Index>& shape) {
  NpyHeader header;
  header.dtype = dtype;
  header.shape = shape;
  std::string dict = std::string("{'descr': '") + to_string(dtype) +
                     "', 'fortran_order': False, 'shape': " + header.shape_string() + ", }";
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  check(dict.size() <= 0xffff, "save_npy: header of ", dict.size(),
        " bytes does not fit format 1.0");
  std::vector<std::uint8_t> out(npy_magic, npy_magic + 6);
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<std::uint8_t>(dict.size() & 0xff));
  out.push_back(static_cast<std::uint8_t>(dict.size() >> 8));
  out.insert(out.end(), dict.begin(), dict.end());
  return out;
}

}  // namespace detail::npy

/// Parses and validates the `.npy` file held in `bytes[0, size)`; `name` labels error messages.
///
/// ensures: the returned header is C order, of a supported dtype, and `size == data_offset +
///          data_bytes()`, so the elements lie at `bytes + data_offset`.
/// Throws hgad::Error naming `name` and the problem on any malformed input; never reads outside
/// `bytes[0, size)`.
inline NpyHeader parse_npy(const std::uint8_t* bytes, std::size_t size, const std::string& name) {
  check(bytes != nullptr || size == 0, "npy: '", name, "': null buffer");
  return detail::npy::parse_npy_header(bytes, size, size, name);
}

/// Reads and validates only the header of the `.npy` file at `path` (the data is not read, but its
/// size is checked against the file size).
inline NpyHeader read_npy_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), "npy: cannot open '", path, "'");
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  check(end >= 0, "npy: cannot determine the size of '", path, "'");
  const auto file_size = static_cast<std::size_t>(end);
  in.seekg(0, std::ios::beg);
  std::vector<std::uint8_t> bytes(std::min<std::size_t>(file_size, 12));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  check(static_cast<bool>(in), "npy: read error on '", path, "'");
  if (bytes.size() >= 10 && std::memcmp(bytes.data(), detail::npy::npy_magic, 6) == 0 &&
      bytes[6] >= 1 && bytes[6] <= 3) {
    std::size_t header_length = std::size_t(bytes[8]) | (std::size_t(bytes[9]) << 8);
    if (bytes[6] > 1 && bytes.size() >= 12)
      header_length |= (std::size_t(bytes[10]) << 16) | (std::size_t(bytes[11]) << 24);
    const std::size_t wanted = std::min(file_size, (bytes[6] == 1 ? 10 : 12) + header_length);
    const std::size_t have = bytes.size();
    if (wanted > have) {
      bytes.resize(wanted);
      in.read(reinterpret_cast<char*>(bytes.data() + have),
              static_cast<std::streamsize>(wanted - have));
      check(static_cast<bool>(in), "npy: read error on '", path, "'");
    }
  }
  return detail::npy::parse_npy_header(bytes.data(), bytes.size(), file_size, path);
}

/// Decodes an in-memory `.npy` file of dtype '<f4' or '<f8' into a CPU Tensor<Scalar>, converting
/// the elements to Scalar.
///
/// requires: rank <= 4 (hgad::max_rank).
template <class Scalar>
Tensor<Scalar> decode_npy(const std::uint8_t* bytes, std::size_t size, const std::string& name) {
  const NpyHeader header = parse_npy(bytes, size, name);
  check(header.dtype != NpyDtype::int64, "npy: '", name,
        "': dtype '<i8' is an integer array; read it with load_npy_int64");
  check(header.shape.size() <= static_cast<std::size_t>(max_rank), "npy: '", name, "': shape ",
        header.shape_string(), " has rank ", header.shape.size(),
        " but hgad::Tensor holds rank <= ", max_rank);
  Tensor<Scalar> tensor{Shape(header.shape)};
  Scalar* out = tensor.data();
  const std::uint8_t* in = bytes + header.data_offset;
  const Index n = header.numel();
  if (header.dtype == NpyDtype::float32) {
    for (Index i = 0; i < n; ++i)
      out[i] = static_cast<Scalar>(detail::npy::read_little_endian<float>(in + 4 * i));
  } else {
    for (Index i = 0; i < n; ++i)
      out[i] = static_cast<Scalar>(detail::npy::read_little_endian<double>(in + 8 * i));
  }
  return tensor;
}

/// Decodes an in-memory `.npy` file of dtype '<i8' into its elements in C order; `shape`, when not
/// null, receives the array's shape.
inline std::vector<std::int64_t> decode_npy_int64(const std::uint8_t* bytes, std::size_t size,
                                                  const std::string& name,
                                                  std::vector<Index>* shape = nullptr) {
  const NpyHeader header = parse_npy(bytes, size, name);
  check(header.dtype == NpyDtype::int64, "npy: '", name, "': dtype '", to_string(header.dtype),
        "' is a floating-point array; expected '<i8' (read it with load_npy<Scalar>)");
  std::vector<std::int64_t> values(static_cast<std::size_t>(header.numel()));
  const std::uint8_t* in = bytes + header.data_offset;
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = detail::npy::read_little_endian<std::int64_t>(in + 8 * i);
  if (shape) *shape = header.shape;
  return values;
}

/// Loads a `.npy` file of dtype '<f4' or '<f8' (any format version 1.0-3.0, C order, rank <= 4)
/// into a CPU Tensor<Scalar>.
///
///     auto w = hgad::load_npy<float>(dir + "/conv1.weight.npy");   // (64, 3, 7, 7)
template <class Scalar>
Tensor<Scalar> load_npy(const std::string& path) {
  const std::vector<std::uint8_t> bytes = detail::io::read_file_bytes(path, "npy");
  return decode_npy<Scalar>(bytes.data(), bytes.size(), path);
}

/// Loads a `.npy` file of dtype '<i8' (e.g. labels) as its elements in C order.
inline std::vector<std::int64_t> load_npy_int64(const std::string& path,
                                                std::vector<Index>* shape = nullptr) {
  const std::vector<std::uint8_t> bytes = detail::io::read_file_bytes(path, "npy");
  return decode_npy_int64(bytes.data(), bytes.size(), path, shape);
}

/// The bytes of a version 1.0 `.npy` file holding `tensor` ('<f4' for float, '<f8' for double).
template <class Scalar>
std::vector<std::uint8_t> encode_npy(const Tensor<Scalar>& tensor) {
  const NpyDtype dtype = std::is_same_v<Scalar, float> ? NpyDtype::float32 : NpyDtype::float64;
  std::vector<std::uint8_t> out = detail::npy::npy_prefix_and_header(dtype, tensor.shape().dims());
  const std::vector<Scalar> values = tensor.to_vector();
  out.reserve(out.size() + values.size() * sizeof(Scalar));
  for (Scalar v : values) detail::npy::append_little_endian(out, v);
  return out;
}

/// The bytes of a version 1.0 `.npy` file of dtype '<i8' holding `values` with `shape` (default:
/// 1-D).
inline std::vector<std::uint8_t> encode_npy_int64(const std::vector<std::int64_t>& values,
                                                  std::vector<Index> shape = {}) {
  if (shape.empty()) shape = {static_cast<Index>(values.size())};
  Index n = 1;
  for (Index d : shape) n *= d;
  check(n == static_cast<Index>(values.size()), "save_npy_int64: ", values.size(),
        " values for a shape of ", n, " elements");
  std::vector<std::uint8_t> out = detail::npy::npy_prefix_and_header(NpyDtype::int64, shape);
  for (std::int64_t v : values) detail::npy::append_little_endian(out, v);
  return out;
}

/// Writes `tensor` (from any device) to `path` as a version 1.0 `.npy` file ('<f4' or '<f8', C
/// order). The file is written to a temporary name and renamed, so a reader never sees a partial
/// file.
template <class Scalar>
void save_npy(const std::string& path, const Tensor<Scalar>& tensor) {
  detail::io::write_bytes_atomically(path, "save_npy", encode_npy(tensor));
}

/// Writes integer `values` with `shape` (default: 1-D) to `path` as a version 1.0 '<i8' `.npy`
/// file, atomically.
inline void save_npy_int64(const std::string& path, const std::vector<std::int64_t>& values,
                           const std::vector<Index>& shape = {}) {
  detail::io::write_bytes_atomically(path, "save_npy_int64", encode_npy_int64(values, shape));
}

}  // namespace hgad
