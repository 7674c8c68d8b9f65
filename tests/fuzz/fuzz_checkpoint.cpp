// libFuzzer target: model checkpoints. The fuzz bytes are the checkpoint's payload; the target
// wraps them in a valid header (magic, version, size, CRC32) so that the fuzzer reaches the entry
// parser and the model loader instead of stopping at the CRC, and it also feeds them unwrapped to
// the container parser. Loading must either give a model whose parameters match its config or raise
// hgad::Error; a crash, another exception, a broken invariant or an allocation the file does not
// pay for (a tiny file whose config asks for a huge model) is a bug.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <hgad/model/hgad_model.hpp>
#include <vector>

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

template <class T>
void put(std::vector<std::uint8_t>& out, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    (void)hgad::Checkpoint::parse(data, size, "fuzz.hgad");
  } catch (const hgad::Error&) {
  }

  std::vector<std::uint8_t> file(hgad::checkpoint_magic, hgad::checkpoint_magic + 8);
  put<std::uint32_t>(file, hgad::checkpoint_format_version);
  put<std::uint64_t>(file, size);
  put<std::uint32_t>(file, hgad::detail::crc32(data, size));
  file.insert(file.end(), data, data + size);
  try {
    const hgad::Checkpoint ckpt = hgad::Checkpoint::parse(file.data(), file.size(), "fuzz.hgad");
    const auto model = hgad::HgadModel<float>::from_checkpoint(ckpt, "fuzz.hgad");
    require(model.n_levels() == static_cast<hgad::Index>(model.config().levels.size()));
    // Round trip: what loaded saves to bytes that load to the same config.
    const std::vector<std::uint8_t> bytes = model.to_checkpoint().serialize();
    const auto again = hgad::HgadModel<float>::from_checkpoint(
        hgad::Checkpoint::parse(bytes.data(), bytes.size(), "again.hgad"), "again.hgad");
    require(again.config() == model.config());
  } catch (const hgad::Error&) {
  }
  return 0;
}
