// libFuzzer target: the key = value model configuration (the CLI's --config file and the config
// stored in every checkpoint). Parsing arbitrary text must either give a config or raise
// hgad::Error; a config that parses and validates must print to text that parses back to itself.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <hgad/model/config.hpp>
#include <string>

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const hgad::ModelConfig config = hgad::ModelConfig::from_text(text, "fuzz.cfg");
    config.validate(false);
    require(hgad::ModelConfig::from_text(config.to_text(), "round trip") == config);
  } catch (const hgad::Error&) {
  }
  return 0;
}
