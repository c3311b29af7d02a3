#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace rt {

namespace {
// Live mappings [begin, end), for release_mapped_pages.
std::mutex g_maps_mutex;
std::map<uintptr_t, uintptr_t> g_maps;
[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error("safetensors file '" + path + "': " + what);
}
}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path, "truncated: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  // Read and validate the header with plain reads before mapping anything.
  uint8_t len_bytes[8];
  if (pread(fd, len_bytes, 8, 0) != 8) {
    ::close(fd);
    fail(path, "cannot read the header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > size - 8) {
    ::close(fd);
    fail(path, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) + " bytes)");
  }
  if (n > (100u << 20)) {
    ::close(fd);
    fail(path, "header length " + std::to_string(n) + " is larger than the 100 MB limit");
  }
  std::string header(n, '\0');
  if (n && pread(fd, header.data(), n, 8) != static_cast<ssize_t>(n)) {
    ::close(fd);
    fail(path, "cannot read the header");
  }
  json j;
  try {
    j = json::parse(header);
  } catch (const std::exception& e) {
    ::close(fd);
    fail(path, std::string("header is not valid JSON (") + e.what() + ")");
  }
  auto file = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->size_ = size;
  file->data_start_ = 8 + n;
  const uint64_t data_size = size - file->data_start_;
  try {
    if (!j.is_object()) fail(path, "header is not a JSON object");
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& name = it.key();
      const json& e = it.value();
      if (name == "__metadata__") {
        if (!e.is_object()) fail(path, "__metadata__ is not an object");
        for (auto m = e.begin(); m != e.end(); ++m)
          if (!m.value().is_string()) fail(path, "__metadata__ value of '" + m.key() + "' is not a string");
        file->metadata_ = e;
        continue;
      }
      if (!e.is_object()) fail(path, "entry '" + name + "' is not an object");
      if (!e.contains("dtype") || !e["dtype"].is_string()) fail(path, "tensor '" + name + "' has no dtype string");
      SafetensorsEntry entry;
      entry.name = name;
      entry.dtype = e["dtype"].get<std::string>();
      if (!is_safetensors_dtype(entry.dtype)) fail(path, "tensor '" + name + "' has unknown or unsupported dtype '" + entry.dtype + "'");
      if (!e.contains("shape") || !e["shape"].is_array()) fail(path, "tensor '" + name + "' has no shape array");
      uint64_t numel = 1;
      for (auto& d : e["shape"]) {
        if (!d.is_number_unsigned()) fail(path, "tensor '" + name + "' has a shape entry that is not a non-negative integer: " + d.dump());
        const uint64_t v = d.get<uint64_t>();
        if (v && numel > UINT64_MAX / v) fail(path, "tensor '" + name + "' shape overflows");
        numel *= v;
        entry.shape.push_back(static_cast<int64_t>(v));
      }
      if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2 ||
          !e["data_offsets"][0].is_number_unsigned() || !e["data_offsets"][1].is_number_unsigned())
        fail(path, "tensor '" + name + "' needs data_offsets [begin, end] of non-negative integers");
      entry.begin = e["data_offsets"][0].get<uint64_t>();
      entry.end = e["data_offsets"][1].get<uint64_t>();
      if (entry.end < entry.begin) fail(path, "tensor '" + name + "' has data_offsets with end before begin");
      if (entry.end > data_size)
        fail(path, "tensor '" + name + "' data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) +
                       "] run past the data section (" + std::to_string(data_size) + " bytes)");
      const uint64_t want = numel * safetensors_dtype_size(entry.dtype);
      if (entry.end - entry.begin != want)
        fail(path, "tensor '" + name + "' holds " + std::to_string(entry.end - entry.begin) + " bytes but " + entry.dtype +
                       " " + shape_str(entry.shape) + " needs " + std::to_string(want));
      file->entries_.push_back(std::move(entry));
    }
    // Offsets must not overlap (empty tensors occupy nothing).
    std::vector<const SafetensorsEntry*> sorted;
    for (auto& e : file->entries_)
      if (e.end > e.begin) sorted.push_back(&e);
    std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < sorted.size(); ++i)
      if (sorted[i]->begin < sorted[i - 1]->end)
        fail(path, "tensors '" + sorted[i - 1]->name + "' and '" + sorted[i]->name + "' overlap in the data section");
  } catch (...) {
    ::close(fd);
    throw;
  }
  for (size_t i = 0; i < file->entries_.size(); ++i) file->index_[file->entries_[i].name] = i;
  // Copy-on-write private mapping: tensors viewing it can be modified without touching the file.
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) fail(path, std::string("mmap failed (") + std::strerror(errno) + ")");
  file->map_ = m;
  file->self_ = file;
  {
    std::lock_guard<std::mutex> lock(g_maps_mutex);
    g_maps[reinterpret_cast<uintptr_t>(m)] = reinterpret_cast<uintptr_t>(m) + size;
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (!map_) return;
  {
    std::lock_guard<std::mutex> lock(g_maps_mutex);
    g_maps.erase(reinterpret_cast<uintptr_t>(map_));
  }
  munmap(map_, size_);
}

namespace {
// The whole pages of a CPU tensor's bytes, [lo, hi), when they lie inside a live mapping; lo == hi otherwise (a
// copy, or less than a page). Neighbouring tensors' partial pages are never included. Call under g_maps_mutex.
std::pair<uintptr_t, uintptr_t> mapped_pages(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0 || !t.device().is_cpu()) return {0, 0};
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto end = begin + t.numel() * t.element_size();
  auto it = g_maps.upper_bound(begin);
  if (it == g_maps.begin()) return {0, 0};
  --it;
  if (begin < it->first || end > it->second) return {0, 0};
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (begin + page - 1) / page * page, hi = end / page * page;
  return hi > lo ? std::make_pair(lo, hi) : std::make_pair(uintptr_t{0}, uintptr_t{0});
}

// Whether every resident page in [lo, hi) is still the file's: /proc/self/pagemap holds one 64-bit entry per page,
// bit 63 present, bit 61 file page (a written page of a private mapping is an anonymous copy), bit 62 swapped.
bool pages_unwritten(uintptr_t lo, uintptr_t hi) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::vector<uint64_t> entries(4096);
  bool unwritten = true;
  for (uintptr_t p = lo; p < hi && unwritten;) {
    const size_t n = std::min<size_t>(entries.size(), (hi - p) / page);
    const ssize_t want = static_cast<ssize_t>(n * sizeof(uint64_t));
    if (pread(fd, entries.data(), want, static_cast<off_t>(p / page * sizeof(uint64_t))) != want) unwritten = false;
    for (size_t i = 0; i < n && unwritten; ++i) {
      const uint64_t e = entries[i];
      unwritten = (e >> 63) & 1 ? (e >> 61) & 1 : !((e >> 62) & 1);
    }
    p += n * page;
  }
  ::close(fd);
  return unwritten;
}

size_t release_pages(const at::Tensor& t, bool only_unwritten) {
  std::lock_guard<std::mutex> lock(g_maps_mutex);  // held through madvise: the mapping cannot go meanwhile
  const auto [lo, hi] = mapped_pages(t);
  if (hi <= lo || (only_unwritten && !pages_unwritten(lo, hi))) return 0;
  madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
  return hi - lo;
}
}  // namespace

size_t release_mapped_pages(const at::Tensor& t) { return release_pages(t, false); }

size_t release_unwritten_mapped_pages(const at::Tensor& t) { return release_pages(t, true); }

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) throw Error("safetensors file '" + path_ + "': no tensor named '" + name + "'");
  const at::ScalarType type = dtype_from_safetensors(e->dtype);
  auto options = at::TensorOptions().dtype(type).device(at::kCPU);
  uint8_t* ptr = static_cast<uint8_t*>(map_) + data_start_ + e->begin;
  const size_t esize = safetensors_dtype_size(e->dtype);
  if (e->end == e->begin) return at::empty(e->shape, options);
  if (reinterpret_cast<uintptr_t>(ptr) % esize != 0) {
    // Misaligned (e.g. after an odd-length fp16 tensor): copy into aligned memory.
    at::Tensor out = at::empty(e->shape, options);
    std::memcpy(out.data_ptr(), ptr, e->end - e->begin);
    return out;
  }
  auto keep = self_.lock();  // the mapping lives as long as any tensor viewing it
  return at::from_blob(ptr, e->shape, [keep](void*) {}, options);
}

bool SafetensorsFile::is_mapped(const at::Tensor& t) const {
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  const auto* base = static_cast<const uint8_t*>(map_);
  return t.numel() > 0 && p >= base && p < base + size_;
}

void SafetensorsFile::prefetch() const { madvise(map_, size_, MADV_WILLNEED); }

json SafetensorsFile::header_json() const {
  json tensors = json::array();
  for (auto& e : entries_)
    tensors.push_back({{"name", e.name}, {"dtype", e.dtype}, {"shape", e.shape}, {"dataOffsets", {e.begin, e.end}}});
  return {{"tensors", tensors}, {"metadata", metadata_}, {"dataStart", data_start_}};
}

}  // namespace rt
