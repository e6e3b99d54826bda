// kdae tokenize: text lines -> JSON id arrays (or back with --decode). A scripting and test tool.
#include <nlohmann/json.hpp>

#include <iostream>
#include <string>

#include "cli/commands.h"
#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace kdae::cli {

Command tokenize_command() {
  Command c;
  c.name = "tokenize";
  c.summary = "encode stdin lines to JSON id arrays (or decode them)";
  c.description =
      "Reads lines from standard input. Encoding prints one JSON array of token ids per line (the newline is\n"
      "not part of the text). --offsets prints {\"ids\": [...], \"offsets\": [[begin, end], ...]} with byte\n"
      "offsets instead. --decode reads one JSON id array per line and prints the decoded text.";
  c.options = {
      {"tokenizer", "DIR", "model or tokenizer directory (tokenizer.json or tokenizer.model)", "", false, true},
      {"no-special", "", "do not add BOS/EOS when encoding; skip special tokens when decoding"},
      {"decode", "", "decode JSON id arrays instead of encoding text"},
      {"offsets", "", "print byte offsets along with the ids"},
  };
  c.run = [](const Args& args) {
    const auto tok = tok::Tokenizer::load(args.get("tokenizer"));
    const bool special = !args.flag("no-special");
    std::string line;
    std::string out;
    size_t line_no = 0;
    while (std::getline(std::cin, line)) {
      ++line_no;
      if (args.flag("decode")) {
        nlohmann::json ids;
        try {
          ids = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          fail("stdin line ", line_no, ": not a JSON array of ids: ", e.what());
        }
        if (!ids.is_array()) fail("stdin line ", line_no, ": not a JSON array of ids");
        std::vector<tok::TokenId> v;
        for (const auto& id : ids) {
          if (!id.is_number_integer()) fail("stdin line ", line_no, ": ids must be integers");
          v.push_back(id.get<tok::TokenId>());
        }
        out = tok->decode(v, !special);
        // A decoded newline would break the one-line-per-input contract: escape it as JSON then.
        if (out.find('\n') != std::string::npos) out = nlohmann::json(out).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        std::cout << out << '\n';
        continue;
      }
      const auto enc = tok->encode_with_offsets(line, special);
      out.clear();
      if (args.flag("offsets")) out += "{\"ids\": ";
      out += '[';
      for (size_t i = 0; i < enc.ids.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(enc.ids[i]);
      }
      out += ']';
      if (args.flag("offsets")) {
        out += ", \"offsets\": [";
        for (size_t i = 0; i < enc.offsets.size(); ++i) {
          if (i) out += ", ";
          out += '[' + std::to_string(enc.offsets[i].first) + ", " + std::to_string(enc.offsets[i].second) + ']';
        }
        out += "]}";
      }
      out += '\n';
      std::cout << out;
    }
    std::cout.flush();
    return 0;
  };
  return c;
}

}  // namespace kdae::cli
