// The generation flags every generating command shares (--max-new-tokens, --temperature, --top-p,
// --seed, --template).
#pragma once
#include <vector>

#include "cli/options.h"
#include "generate/decode.h"

namespace kdae::cli {

std::vector<Option> generation_options();
gen::GenerateOptions generate_options_from(const Args& args);

}  // namespace kdae::cli
