#include "data/pickle-reader.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <variant>
#include <vector>

#include "common/error.h"

namespace kdae::data {
namespace {

struct Mark {};
struct List;
using Value = std::variant<std::monostate, Mark, std::string, int64_t, bool, std::shared_ptr<List>>;
struct List {
  std::vector<Value> items;
  bool tuple = false;
};

class Unpickler {
 public:
  Unpickler(std::string_view bytes, std::string file) : b_(bytes), file_(std::move(file)) {}

  Value run() {
    while (true) {
      const size_t at = pos_;
      const auto op = static_cast<unsigned char>(take(1)[0]);
      switch (op) {
        case 0x80: take(1); break;                                            // PROTO
        case 0x95: take(8); break;                                            // FRAME
        case '.': return pop(at);                                             // STOP
        case '(': stack_.push_back(Mark{}); break;                            // MARK
        case ']': stack_.push_back(std::make_shared<List>()); break;          // EMPTY_LIST
        case ')': stack_.push_back(tuple_of({})); break;                      // EMPTY_TUPLE
        case 'l': stack_.push_back(list_of(pop_to_mark(at), false)); break;   // LIST
        case 't': stack_.push_back(tuple_of(pop_to_mark(at))); break;         // TUPLE
        case 0x85: case 0x86: case 0x87: stack_.push_back(tuple_of(pop_n(op - 0x84, at))); break;  // TUPLE1-3
        case 'a': append(pop_n(1, at), at); break;                            // APPEND
        case 'e': append(pop_to_mark(at), at); break;                         // APPENDS
        case 'X': stack_.emplace_back(std::string(take(le(4)))); break;       // BINUNICODE
        case 0x8c: stack_.emplace_back(std::string(take(le(1)))); break;      // SHORT_BINUNICODE
        case 0x8d: stack_.emplace_back(std::string(take(le(8)))); break;      // BINUNICODE8
        case 'K': stack_.emplace_back(static_cast<int64_t>(le(1))); break;    // BININT1
        case 'M': stack_.emplace_back(static_cast<int64_t>(le(2))); break;    // BININT2
        case 'J': stack_.emplace_back(static_cast<int64_t>(static_cast<int32_t>(le(4)))); break;  // BININT
        case 0x88: stack_.emplace_back(true); break;                          // NEWTRUE
        case 0x89: stack_.emplace_back(false); break;                         // NEWFALSE
        case 'N': stack_.emplace_back(std::monostate{}); break;               // NONE
        case 0x94: memo_[memo_.size()] = top(at); break;                      // MEMOIZE
        case 'q': memo_[le(1)] = top(at); break;                              // BINPUT
        case 'r': memo_[le(4)] = top(at); break;                              // LONG_BINPUT
        case 'h': stack_.push_back(get(le(1), at)); break;                    // BINGET
        case 'j': stack_.push_back(get(le(4), at)); break;                    // LONG_BINGET
        default:
          fail(file_, ": byte ", at, ": pickle opcode 0x", std::hex, static_cast<int>(op), std::dec,
               " is not part of a list of strings or (string, is_domain) pairs; kdae reads only those (convert "
               "other pickles to JSONL, docs/migrating.md)");
      }
    }
  }

 private:
  std::string_view take(size_t n) {
    if (n > b_.size() - pos_) fail(file_, ": byte ", pos_, ": the pickle ends early (truncated?)");
    auto s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  uint64_t le(size_t n) {  // little-endian unsigned of n bytes
    const auto s = take(n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s[i])) << (8 * i);
    return v;
  }
  Value pop(size_t at) {
    if (stack_.empty() || std::holds_alternative<Mark>(stack_.back())) fail(file_, ": byte ", at, ": malformed pickle (stack underflow)");
    Value v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  const Value& top(size_t at) {
    if (stack_.empty()) fail(file_, ": byte ", at, ": malformed pickle (memo of nothing)");
    return stack_.back();
  }
  Value get(uint64_t key, size_t at) {
    const auto it = memo_.find(key);
    if (it == memo_.end()) fail(file_, ": byte ", at, ": malformed pickle (memo ", key, " unset)");
    return it->second;
  }
  std::vector<Value> pop_n(size_t n, size_t at) {
    std::vector<Value> out(n);
    for (size_t i = n; i-- > 0;) out[i] = pop(at);
    return out;
  }
  std::vector<Value> pop_to_mark(size_t at) {
    std::vector<Value> out;
    while (!stack_.empty() && !std::holds_alternative<Mark>(stack_.back())) out.insert(out.begin(), pop(at));
    if (stack_.empty()) fail(file_, ": byte ", at, ": malformed pickle (no mark)");
    stack_.pop_back();
    return out;
  }
  static Value list_of(std::vector<Value> items, bool tuple) {
    auto l = std::make_shared<List>();
    l->items = std::move(items);
    l->tuple = tuple;
    return l;
  }
  static Value tuple_of(std::vector<Value> items) { return list_of(std::move(items), true); }
  void append(std::vector<Value> items, size_t at) {
    auto* list = stack_.empty() ? nullptr : std::get_if<std::shared_ptr<List>>(&stack_.back());
    if (!list || (*list)->tuple) fail(file_, ": byte ", at, ": malformed pickle (append to a non-list)");
    for (auto& v : items) (*list)->items.push_back(std::move(v));
  }

  std::string_view b_;
  std::string file_;
  size_t pos_ = 0;
  std::vector<Value> stack_;
  std::map<uint64_t, Value> memo_;
};

// An item: "text", or ("text", flag) as the reference's DAE data holds it.
JsonlRecord record_of(const Value& item, int64_t n, const std::string& where) {
  JsonlRecord r;
  r.line = n;
  r.form = SampleForm::text;
  const Value* text = &item;
  const Value* flag = nullptr;
  if (const auto* pair = std::get_if<std::shared_ptr<List>>(&item)) {
    if ((*pair)->items.size() != 2) fail(where, ": expected a string or a (text, is_domain) pair");
    text = &(*pair)->items[0];
    flag = &(*pair)->items[1];
  }
  const auto* s = std::get_if<std::string>(text);
  if (!s) fail(where, ": expected the sample text as a string");
  r.text = *s;
  if (flag) {
    const auto* b = std::get_if<bool>(flag);
    const auto* i = std::get_if<int64_t>(flag);
    if (!b && !(i && (*i == 0 || *i == 1))) fail(where, ": is_domain must be 0/1 or True/False");
    r.domain = (b ? *b : *i == 1) ? "domain" : "general";
  }
  return r;
}

}  // namespace

bool looks_like_pickle(std::string_view bytes) { return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x80; }

void read_reference_pickle(std::string_view bytes, const std::string& file_name,
                           const std::function<void(JsonlRecord&&)>& visit) {
  const Value root = Unpickler(bytes, file_name).run();
  const auto* list = std::get_if<std::shared_ptr<List>>(&root);
  if (!list || (*list)->tuple) fail(file_name, ": the pickle holds no list of samples");
  int64_t n = 0;
  for (const auto& item : (*list)->items) {
    ++n;
    visit(record_of(item, n, str(file_name, ": item ", n)));
  }
}

}  // namespace kdae::data
