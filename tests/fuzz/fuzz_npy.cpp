// libFuzzer target: the .npy parser and decoders on arbitrary bytes. Every input must either parse
// into a header consistent with the input size or raise hgad::Error; anything else is a bug.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <hgad/io/npy.hpp>

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const hgad::NpyHeader header = hgad::parse_npy(data, size, "fuzz.npy");
    require(!header.fortran_order);
    require(header.data_offset <= size);
    require(header.data_offset + header.data_bytes() == size);
  } catch (const hgad::Error&) {
  }
  try {
    const auto t = hgad::decode_npy<float>(data, size, "fuzz.npy");
    require(static_cast<std::size_t>(t.numel()) * 4 <= size);
  } catch (const hgad::Error&) {
  }
  try {
    const auto t = hgad::decode_npy<double>(data, size, "fuzz.npy");
    require(static_cast<std::size_t>(t.numel()) * 4 <= size);
  } catch (const hgad::Error&) {
  }
  try {
    std::vector<hgad::Index> shape;
    const auto v = hgad::decode_npy_int64(data, size, "fuzz.npy", &shape);
    require(v.size() * 8 <= size);
  } catch (const hgad::Error&) {
  }
  return 0;
}
