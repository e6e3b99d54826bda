#include "tokenizer/normalizers.h"

#include <nlohmann/json.hpp>

#include <vector>

#include "common/error.h"

namespace kdae::tok {

using json = nlohmann::json;

Normalizer make_normalizer(const json& c, const std::string& where) {
  if (c.is_null()) return {};
  const std::string type = c.value("type", std::string());
  try {
    if (type == "Sequence") {
      std::vector<Normalizer> steps;
      const json& list = c.at("normalizers");
      for (size_t i = 0; i < list.size(); ++i)
        if (auto n = make_normalizer(list[i], str(where, ".normalizers[", i, "]"))) steps.push_back(std::move(n));
      return [steps](NormalizedText& t) {
        for (const auto& s : steps) s(t);
      };
    }
    if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD")
      return [type](NormalizedText& t) { t.unicode_normalize(type); };
    if (type == "Lowercase") return [](NormalizedText& t) { t.lowercase(); };
    if (type == "Prepend") {
      const auto prefix = c.at("prepend").get<std::string>();
      return [prefix](NormalizedText& t) { t.prepend(prefix); };
    }
    if (type == "Replace") {
      if (!c.at("pattern").contains("String")) fail(where, ": only String patterns are supported in a Replace normalizer");
      const auto pattern = c["pattern"]["String"].get<std::string>();
      const auto content = c.at("content").get<std::string>();
      return [pattern, content](NormalizedText& t) { t.replace(pattern, content); };
    }
  } catch (const json::exception& e) {
    fail(where, ": malformed ", type, " normalizer: ", e.what());
  }
  fail(where, ": unsupported normalizer type '", type, "'");
}

}  // namespace kdae::tok
