// Precompiled header for libkdae: the LibTorch headers nearly every tensor file needs.
// Keep this list short; a header that only one file needs belongs in that file.
#pragma once
#include <torch/types.h>
#include <torch/nn/module.h>
#include <torch/nn/functional.h>
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
#include <memory>
#include <filesystem>
