// safetensors reader: validates the whole header before touching data, then maps the file and hands out
// tensors that view the mapping (zero-copy) when dtype, device and alignment allow.
#pragma once
#include <memory>

#include "core/common.h"

namespace rt {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // safetensors name, e.g. "F32"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // offsets from the start of the data section
};

// Hands the resident pages of a tensor that views a live mapping back to the system (madvise DONTNEED on the
// whole pages inside it; clean pages read the file again if touched). Call only for a tensor nobody else
// holds and that was never written (a frozen weight being replaced). Returns the bytes released.
size_t release_mapped_pages(const at::Tensor& t);

// The same for a tensor others still hold: releases only when every resident page of it is still the file's
// (none written, which in a private mapping would have made it a private copy: /proc/self/pagemap says which),
// so reading the tensor later gives the same bytes. Returns the bytes released (0 when it kept them).
size_t release_unwritten_mapped_pages(const at::Tensor& t);

class SafetensorsFile {
 public:
  // Throws rt::Error naming the file and the fault for any malformed file.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const json& metadata() const { return metadata_; }
  uint64_t data_start() const { return data_start_; }
  const SafetensorsEntry* find(const std::string& name) const;
  // The tensor `name`; a view of the mapping when possible (copy-on-write, so in-place writes are safe).
  at::Tensor tensor(const std::string& name) const;
  // Whether `t` views this file's mapping (rather than an aligned copy).
  bool is_mapped(const at::Tensor& t) const;
  // Starts reading the whole file into the page cache in the background (madvise WILLNEED).
  void prefetch() const;
  // Header as JSON: {tensors: [{name, dtype, shape, dataOffsets}], metadata, dataStart}.
  json header_json() const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  json metadata_ = json::object();
  std::weak_ptr<SafetensorsFile> self_;
};

}  // namespace rt
