#pragma once
/// \file
/// The checkpoint container: named text values and tensors in one file, checked by a CRC32.
///
/// Layout (all integers little-endian):
///
///     offset  0  8 bytes  magic "HGADCKPT"
///     offset  8  u32      format version (checkpoint_format_version)
///     offset 12  u64      payload size in bytes
///     offset 20  u32      CRC32 (IEEE 802.3) of the payload
///     offset 24  payload: u32 entry count, then per entry, in name order:
///                u8 kind (1 text, 2 float32 tensor, 3 float64 tensor, 4 int64 vector),
///                u32 name length, name bytes, then
///                text: u64 length, bytes;  tensor: u32 rank, u64 dims[rank], elements;
///                int64 vector: u64 count, elements.
///
/// Entries are kept sorted by name, so the same contents always serialise to the same bytes.
/// `save` writes atomically (temporary file, flush, fsync, rename): a crash never leaves a
/// half-written checkpoint under the final name, and an existing file survives a failed write.
///
///     hgad::Checkpoint ckpt;
///     ckpt.set_text("config", config_text);
///     ckpt.set_tensor("level0.mu", mu);
///     ckpt.save("model.hgad");
///     auto loaded = hgad::Checkpoint::load("model.hgad");
///     hgad::Tensor<float> mu2 = loaded.tensor<float>("level0.mu");

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "../detail/atomic_file.hpp"
#include "../detail/check.hpp"
#include "../tensor.hpp"

namespace hgad {

inline constexpr char checkpoint_magic[8] = {'H', 'G', 'A', 'D', 'C', 'K', 'P', 'T'};
/// Version written by this library; files of a newer version are refused with a clear error.
inline constexpr std::uint32_t checkpoint_format_version = 1;
/// Bytes before the payload: magic, version, payload size, CRC32 (see the layout above).
inline constexpr std::size_t checkpoint_header_size = 24;

namespace detail {

/// CRC32 (IEEE 802.3, reflected polynomial 0xEDB88320), as zlib's crc32.
inline std::uint32_t crc32(const std::uint8_t* data, std::size_t size) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

/// Appends little-endian integers and raw bytes (the library assumes a little-endian host).
class ByteWriter {
 public:
  template <class T>
  void put(T value) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&value);
    m_bytes.insert(m_bytes.end(), p, p + sizeof(T));
  }
  void put_bytes(const void* data, std::size_t size) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    m_bytes.insert(m_bytes.end(), p, p + size);
  }
  std::vector<std::uint8_t>& bytes() { return m_bytes; }

 private:
  std::vector<std::uint8_t> m_bytes;
};

/// Reads what ByteWriter wrote, refusing to read past the end.
class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size, const std::string& name)
      : m_data(data), m_size(size), m_name(name) {}
  template <class T>
  T get(const char* what) {
    T value;
    std::memcpy(&value, take(sizeof(T), what), sizeof(T));
    return value;
  }
  const std::uint8_t* take(std::size_t size, const char* what) {
    check(size <= m_size - m_pos, "checkpoint '", m_name, "' is corrupted: ", what, " runs past the end (",
          size, " bytes wanted at offset ", m_pos, " of ", m_size, ")");
    const std::uint8_t* p = m_data + m_pos;
    m_pos += size;
    return p;
  }
  bool at_end() const { return m_pos == m_size; }

 private:
  const std::uint8_t* m_data;
  std::size_t m_size;
  std::size_t m_pos = 0;
  std::string m_name;
};

}  // namespace detail

/// A set of named entries (text, float32/float64 tensors, int64 vectors) stored as one file.
class Checkpoint {
 public:
  enum class Kind : std::uint8_t { text = 1, float32 = 2, float64 = 3, int64 = 4 };

  void set_text(const std::string& name, const std::string& value) {
    Entry& e = m_entries[name];
    e = Entry{};
    e.kind = Kind::text;
    e.text = value;
  }
  /// Stores a tensor in its own precision (float32 for float, float64 for double).
  template <class Scalar>
  void set_tensor(const std::string& name, const Tensor<Scalar>& tensor) {
    Entry& e = m_entries[name];
    e = Entry{};
    e.kind = std::is_same_v<Scalar, float> ? Kind::float32 : Kind::float64;
    e.dims = tensor.shape().dims();
    const auto values = tensor.to_vector();
    e.raw.resize(values.size() * sizeof(Scalar));
    if (!values.empty()) std::memcpy(e.raw.data(), values.data(), e.raw.size());
  }
  void set_int64(const std::string& name, const std::vector<std::int64_t>& values) {
    Entry& e = m_entries[name];
    e = Entry{};
    e.kind = Kind::int64;
    e.dims = {static_cast<Index>(values.size())};
    e.raw.resize(values.size() * sizeof(std::int64_t));
    if (!values.empty()) std::memcpy(e.raw.data(), values.data(), e.raw.size());
  }

  bool has(const std::string& name) const { return m_entries.count(name) != 0; }
  /// Removes the entry `name`; false when there is none.
  bool erase(const std::string& name) { return m_entries.erase(name) != 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, entry] : m_entries) out.push_back(name);
    return out;
  }

  /// The number of values held by all tensor entries: what a loader can justify allocating.
  std::uint64_t tensor_elements() const {
    std::uint64_t n = 0;
    for (const auto& [name, e] : m_entries) {
      if (e.kind == Kind::float32) n += e.raw.size() / 4;
      if (e.kind == Kind::float64) n += e.raw.size() / 8;
    }
    return n;
  }

  const std::string& text(const std::string& name) const { return entry(name, Kind::text).text; }
  /// The tensor stored under `name`, converted to Scalar.
  template <class Scalar>
  Tensor<Scalar> tensor(const std::string& name) const {
    const Entry& e = entry(name);
    check(e.kind == Kind::float32 || e.kind == Kind::float64, "checkpoint entry '", name,
          "' is not a tensor");
    Tensor<Scalar> t{Shape(e.dims)};
    const Index n = t.numel();
    if (e.kind == Kind::float32) {
      const float* src = reinterpret_cast<const float*>(e.raw.data());
      for (Index i = 0; i < n; ++i) t.data()[i] = static_cast<Scalar>(src[i]);
    } else {
      const double* src = reinterpret_cast<const double*>(e.raw.data());
      for (Index i = 0; i < n; ++i) t.data()[i] = static_cast<Scalar>(src[i]);
    }
    return t;
  }
  std::vector<std::int64_t> int64(const std::string& name) const {
    const Entry& e = entry(name, Kind::int64);
    std::vector<std::int64_t> out(e.raw.size() / sizeof(std::int64_t));
    if (!out.empty()) std::memcpy(out.data(), e.raw.data(), e.raw.size());
    return out;
  }

  /// The whole file as bytes: header, then the payload.
  std::vector<std::uint8_t> serialize() const {
    detail::ByteWriter payload;
    payload.put<std::uint32_t>(static_cast<std::uint32_t>(m_entries.size()));
    for (const auto& [name, e] : m_entries) {
      payload.put<std::uint8_t>(static_cast<std::uint8_t>(e.kind));
      payload.put<std::uint32_t>(static_cast<std::uint32_t>(name.size()));
      payload.put_bytes(name.data(), name.size());
      if (e.kind == Kind::text) {
        payload.put<std::uint64_t>(e.text.size());
        payload.put_bytes(e.text.data(), e.text.size());
      } else if (e.kind == Kind::int64) {
        payload.put<std::uint64_t>(static_cast<std::uint64_t>(e.dims[0]));
        payload.put_bytes(e.raw.data(), e.raw.size());
      } else {
        payload.put<std::uint32_t>(static_cast<std::uint32_t>(e.dims.size()));
        for (Index d : e.dims) payload.put<std::uint64_t>(static_cast<std::uint64_t>(d));
        payload.put_bytes(e.raw.data(), e.raw.size());
      }
    }
    const auto& body = payload.bytes();
    detail::ByteWriter file;
    file.put_bytes(checkpoint_magic, sizeof(checkpoint_magic));
    file.put<std::uint32_t>(checkpoint_format_version);
    file.put<std::uint64_t>(body.size());
    file.put<std::uint32_t>(detail::crc32(body.data(), body.size()));
    file.put_bytes(body.data(), body.size());
    return std::move(file.bytes());
  }

  /// Writes the checkpoint atomically to `path`.
  void save(const std::string& path) const {
    const auto bytes = serialize();
    detail::write_file_atomically(path, bytes.data(), bytes.size());
  }

  /// Reads and verifies a checkpoint file. Errors say which check failed: missing file, wrong
  /// magic, newer format version, truncated file, CRC mismatch, or a malformed entry. The header is
  /// read and checked first, and no more than the payload it announces (plus one byte, to tell
  /// trailing bytes) is read after it, in steps that grow with what the file actually holds: a file
  /// that is not a checkpoint is refused after 24 bytes whatever its size (/dev/zero included),
  /// and a header announcing more than the file holds costs no more memory than the file.
  static Checkpoint load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    check(static_cast<bool>(in), "cannot open checkpoint '", path, "'");
    std::vector<std::uint8_t> bytes(checkpoint_header_size);
    in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(bytes.size()));
    bytes.resize(static_cast<std::size_t>(in.gcount()));
    const std::uint64_t payload_size = check_header(bytes.data(), bytes.size(), path);
    const std::uint64_t most = std::numeric_limits<std::uint64_t>::max();
    const std::uint64_t wanted = payload_size < most - checkpoint_header_size - 1
                                     ? checkpoint_header_size + payload_size + 1
                                     : most;
    constexpr std::size_t step = std::size_t(64) << 20;  // 64 MiB per read
    while (in && bytes.size() < wanted) {
      const std::size_t old_size = bytes.size();
      const std::size_t chunk = static_cast<std::size_t>(
          std::min<std::uint64_t>(wanted - old_size, std::max<std::uint64_t>(old_size, step)));
      bytes.resize(old_size + chunk);
      in.read(reinterpret_cast<char*>(bytes.data() + old_size), std::streamsize(chunk));
      bytes.resize(old_size + static_cast<std::size_t>(in.gcount()));
    }
    return parse(bytes.data(), bytes.size(), path);
  }

  /// Checks the 24-byte header at the start of `data` (magic, format version) and returns the
  /// payload size it announces; `name` is used in error messages.
  static std::uint64_t check_header(const std::uint8_t* data, std::size_t size,
                                    const std::string& name) {
    check(size >= sizeof(checkpoint_magic) &&
              std::memcmp(data, checkpoint_magic, sizeof(checkpoint_magic)) == 0,
          "'", name, "' is not an hgad checkpoint (wrong magic bytes)");
    check(size >= checkpoint_header_size, "checkpoint '", name, "' is truncated: ", size,
          " bytes, shorter than the 24-byte header");
    detail::ByteReader header(data, checkpoint_header_size, name);
    header.take(sizeof(checkpoint_magic), "magic");
    const auto version = header.get<std::uint32_t>("version");
    const auto payload_size = header.get<std::uint64_t>("payload size");
    check(version <= checkpoint_format_version, "checkpoint '", name, "' has format version ",
          version, ", newer than the version ", checkpoint_format_version, " this library reads");
    check(version >= 1, "checkpoint '", name, "' has invalid format version 0");
    return payload_size;
  }

  /// Parses checkpoint bytes; `name` is used in error messages. Never reads out of bounds.
  static Checkpoint parse(const std::uint8_t* data, std::size_t size, const std::string& name) {
    constexpr std::size_t header_size = checkpoint_header_size;
    const std::uint64_t payload_size = check_header(data, size, name);
    std::uint32_t crc = 0;
    std::memcpy(&crc, data + 20, sizeof(crc));  // offset 20 of the layout above
    check(payload_size <= size - header_size, "checkpoint '", name,
          "' is truncated: the header announces ", payload_size, " payload bytes but only ",
          size - header_size, " follow");
    check(payload_size == size - header_size, "checkpoint '", name, "' has ",
          size - header_size - payload_size, " unexpected bytes after the payload");
    const std::uint8_t* payload = data + header_size;
    check(detail::crc32(payload, payload_size) == crc, "checkpoint '", name,
          "' is corrupted: CRC32 mismatch over the payload");

    Checkpoint out;
    detail::ByteReader r(payload, payload_size, name);
    const auto n_entries = r.get<std::uint32_t>("entry count");
    for (std::uint32_t i = 0; i < n_entries; ++i) {
      Entry e;
      const auto kind = r.get<std::uint8_t>("entry kind");
      check(kind >= 1 && kind <= 4, "checkpoint '", name, "' is corrupted: unknown entry kind ", int(kind));
      e.kind = static_cast<Kind>(kind);
      const auto name_size = r.get<std::uint32_t>("entry name length");
      const auto* name_bytes = r.take(name_size, "entry name");
      std::string entry_name(reinterpret_cast<const char*>(name_bytes), name_size);
      if (e.kind == Kind::text) {
        const auto n = r.get<std::uint64_t>("text length");
        const auto* p = r.take(n, "text");
        e.text.assign(reinterpret_cast<const char*>(p), n);
      } else {
        std::uint64_t count = 0;
        if (e.kind == Kind::int64) {
          count = r.get<std::uint64_t>("vector length");
          e.dims = {static_cast<Index>(count)};
        } else {
          const auto rank = r.get<std::uint32_t>("tensor rank");
          check(rank <= static_cast<std::uint32_t>(max_rank), "checkpoint '", name, "' is corrupted: entry '",
                entry_name, "' has rank ", rank);
          count = 1;
          for (std::uint32_t k = 0; k < rank; ++k) {
            const auto d = r.get<std::uint64_t>("tensor dimension");
            check(d < (std::uint64_t(1) << 40) && (d == 0 || count <= (std::uint64_t(1) << 40) / d),
                  "checkpoint '", name, "' is corrupted: entry '", entry_name, "' has an impossible shape");
            count *= d;
            e.dims.push_back(static_cast<Index>(d));
          }
        }
        const std::size_t element = e.kind == Kind::float32 ? 4 : 8;
        check(count <= payload_size / element, "checkpoint '", name, "' is corrupted: entry '", entry_name,
              "' claims more elements than the file holds");
        const auto* p = r.take(count * element, "tensor data");
        e.raw.assign(p, p + count * element);
      }
      check(out.m_entries.emplace(entry_name, std::move(e)).second, "checkpoint '", name,
            "' is corrupted: entry '", entry_name, "' appears twice");
    }
    check(r.at_end(), "checkpoint '", name, "' is corrupted: bytes after the last entry");
    return out;
  }

 private:
  struct Entry {
    Kind kind = Kind::text;
    std::string text;
    std::vector<Index> dims;
    std::vector<std::uint8_t> raw;
  };

  const Entry& entry(const std::string& name) const {
    const auto it = m_entries.find(name);
    check(it != m_entries.end(), "checkpoint has no entry '", name, "'");
    return it->second;
  }
  const Entry& entry(const std::string& name, Kind kind) const {
    const Entry& e = entry(name);
    check(e.kind == kind, "checkpoint entry '", name, "' has another kind than requested");
    return e;
  }

  std::map<std::string, Entry> m_entries;
};

}  // namespace hgad
