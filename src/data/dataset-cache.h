// The tokenized-dataset cache: one binary file per dataset fingerprint, so a rerun on the same
// data + tokenizer + template + options skips reading and tokenizing. Read through mmap and fully
// validated (magic, version, fingerprint, sizes, checksum): a bad file is reported, never trusted.
// Layout (native little-endian, every section 8-byte aligned):
//   header (128 bytes): magic "KDAEDSC\0", u32 version, u32 0x01020304 (endianness),
//     char fingerprint[64], u64 samples, u64 tokens, u64 meta_bytes, u64 file_bytes, u64 checksum
//   u64 offsets[samples + 1]   token offset of each sample
//   i64 domain[samples], i64 line[samples], f32 weight[samples] (padded to 8)
//   i32 ids[tokens] (padded), u8 supervised[tokens] (padded)
//   meta: JSON {stats without lengths, domain_names, chat_template}
// checksum = FNV-1a 64 of everything after the header. Torch-free.
#pragma once
#include <filesystem>
#include <optional>
#include <string>

#include "data/dataset.h"

namespace kdae::data {

std::filesystem::path dataset_cache_file(const std::filesystem::path& cache_dir, const std::string& fingerprint);

// nullopt when the file is missing (*why empty) or invalid (*why says what is wrong).
std::optional<Dataset> read_dataset_cache(const std::filesystem::path& file, const std::string& fingerprint,
                                          std::string* why);

// Atomic: a crash mid-write leaves the old file or none, never a torn one.
void write_dataset_cache(const std::filesystem::path& file, const Dataset& dataset);

}  // namespace kdae::data
