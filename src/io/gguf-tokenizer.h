// A GGUF file's tokenizer metadata (tokenizer.ggml.*) as Hugging Face tokenizer.json and
// tokenizer_config.json, torch-free. Two kinds:
//   "gpt2":  byte-level BPE; tokens are already in the byte alphabet, merges are stored; the
//            pre-tokenizer regex follows tokenizer.ggml.pre (llama3 / qwen2 splits, else GPT-2's).
//   "llama": sentencepiece BPE with byte fallback; merges are not stored, so they are recovered
//            from the vocabulary ranked by tokenizer.ggml.scores.
// The result tokenizes like transformers' own GGUF tokenizer loading (the test oracle).
#pragma once
#include <string>

#include "io/gguf-format.h"

namespace kdae::io {

struct HfTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  std::string chat_template;  // empty when the file has none
};

HfTokenizerFiles gguf_tokenizer_to_hf(const GgufFile& file);

// The other way, for export: tokenizer.ggml.* key/values from an HF tokenizer.json (BPE models only;
// byte-level -> "gpt2", byte-fallback sentencepiece -> "llama"). Empty when the JSON is another kind.
std::vector<std::pair<std::string, GgufValue>> hf_tokenizer_to_gguf(const std::string& tokenizer_json,
                                                                    const std::string& tokenizer_config_json,
                                                                    const std::string& source);

}  // namespace kdae::io
