// The reference's (kd-dae) data files: Python pickles of a list of str (KD) or of (str, is_domain) pairs (DAE),
// read without Python. Only the opcodes such lists use (binary protocols 2-5: strings, ints, booleans, lists,
// tuples, the memo) are understood; nothing is ever executed, so any other opcode (GLOBAL, REDUCE, ... as a
// numpy value would need) is an error naming the file, byte offset and item. Torch-free.
#pragma once
#include <functional>
#include <string>
#include <string_view>

#include "data/jsonl-reader.h"

namespace kdae::data {

// True when the bytes start like a binary pickle (the PROTO opcode).
bool looks_like_pickle(std::string_view bytes);

// Visits each list item as a reference-format {"text"} record (line = 1-based item number) with its
// is_domain flag (0/1/True/False) as the domain; errors name "FILE: item N" or "FILE: byte B".
void read_reference_pickle(std::string_view bytes, const std::string& file_name,
                           const std::function<void(JsonlRecord&&)>& visit);

}  // namespace kdae::data
