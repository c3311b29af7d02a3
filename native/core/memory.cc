// Large CPU blocks are cached by size class and reused; see memory.h for why.
#include "core/memory.h"

#include <c10/core/CPUAllocator.h>
#include <malloc.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/common.h"

namespace rt {

namespace {

constexpr size_t kLargeBlock = size_t(1) << 20;  // ATen blocks from 1 MiB up are cached; smaller ones go to glibc
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugeFrom = size_t(4) << 20;    // blocks from 4 MiB up ask for transparent huge pages

// Size classes spaced 1/8 of the power of two below (>= 64 KiB): at most 12.5% slack, and shapes that differ
// a little (a batch of 2 vs 3 rows of tokens) still share blocks.
size_t size_class(size_t n) {
  size_t p = 1;
  while (p <= n / 2) p *= 2;
  const size_t g = std::max<size_t>(size_t(64) << 10, p / 8);
  return (n + g - 1) / g * g;
}

bool g_huge_pages = true;  // ROUNDTRIP_HUGE_PAGES=off: plain 4 KiB pages (THP compaction stalls on a busy host)

void* map_block(size_t size) {
  if (size < kHugeFrom || !g_huge_pages) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  // Huge-page aligned, so the kernel can back it with 2 MiB pages (512× fewer first-touch faults).
  void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t a = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (a + kHugePage - 1) & ~(kHugePage - 1);
  if (aligned > a) munmap(raw, aligned - a);
  const uintptr_t end = a + size + kHugePage, used_end = aligned + size;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
  void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  madvise(p, size, MADV_HUGEPAGE);
#endif
  return p;
}

// ROUNDTRIP_CACHE_PERTURB=<1..255> (0: off): every large block handed out (fresh or reused) is filled with this byte, as
// glibc's MALLOC_PERTURB_ does for small ones. A reused block is otherwise handed out as its last user left it, as
// PyTorch's own allocators do; a result that changes under perturbation reads memory it has not written
// (test/memory-cache.test.ts holds the joint step to that).
int g_perturb = 0;

struct FreeBlock {
  void* ptr;
  size_t size;
};

class CachingCpuAllocator final : public at::Allocator {
 public:
  explicit CachingCpuAllocator(at::Allocator* fallback) : fallback_(fallback) {}

  // libtorch < 2.3 declares allocate() const, later versions non-const: whichever the base has is overridden.
  at::DataPtr allocate(size_t n) const {
    if (n < kLargeBlock) return fallback_->allocate(n);
    void* p = self().take(n);
    return {p, p, &free_any, at::Device(at::kCPU)};
  }
  at::DataPtr allocate(size_t n) { return static_cast<const CachingCpuAllocator*>(this)->allocate(n); }
  at::DeleterFnPtr raw_deleter() const override { return &free_any; }
  // libtorch >= 2.3 asks allocators to copy their own blocks.
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

  static CachingCpuAllocator* instance;

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak_bytes = stats_.live_bytes + stats_.cached_bytes;
    stats_.peak_live_bytes = stats_.live_bytes;
  }
  void release_all() {
    std::vector<FreeBlock> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.assign(lru_.begin(), lru_.end());
      lru_.clear();
      by_size_.clear();
      stats_.cached_bytes = 0;
      // The cache's budget restarts from what is live now: a load's never-touched construction blocks (or the
      // previous phase's working set) must not license the next phase to keep that much cached.
      peak_live_ = stats_.live_bytes;
    }
    for (auto& b : drop) munmap(b.ptr, b.size);
  }

 private:
  CachingCpuAllocator& self() const { return *const_cast<CachingCpuAllocator*>(this); }

  // A cached block of the request's class (or up to 25% larger). On a miss, least recently freed blocks are
  // unmapped until live + cached + the request fits under 1.25 × the high-water mark of live bytes, so the cache
  // holds at most a quarter more than the peak working set, yet a repeated call (the same sizes) finds every
  // block it needs.
  void* take(size_t n) {
    const size_t want = size_class(n);
    std::vector<FreeBlock> drop;
    FreeBlock reused{nullptr, 0};
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = by_size_.lower_bound(want);
      if (it != by_size_.end() && it->first <= want + want / 4) {
        reused = *it->second;
        lru_.erase(it->second);
        by_size_.erase(it);
        stats_.cached_bytes -= reused.size;
        stats_.live_bytes += reused.size;
        ++stats_.hits;
        live_[reused.ptr] = reused.size;
      }
    }
    if (reused.ptr) {
      if (g_perturb) std::memset(reused.ptr, g_perturb, reused.size);  // outside the lock: the block is ours
      return reused.ptr;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.misses;
      // 25% over the high-water mark: a call's sizes rarely pack exactly into its peak (a block of one size is
      // free while another size is needed), and without slack such blocks would evict each other every call.
      while (!lru_.empty() && stats_.live_bytes + stats_.cached_bytes + want > peak_live_ + peak_live_ / 4) {
        FreeBlock b = lru_.front();
        erase_from_index(lru_.begin());
        lru_.pop_front();
        stats_.cached_bytes -= b.size;
        ++stats_.evictions;
        drop.push_back(b);
      }
    }
    for (auto& b : drop) munmap(b.ptr, b.size);
    void* p = map_block(want);
    if (!p) throw Error("out of memory: cannot map " + std::to_string(want >> 20) + " MiB for a tensor");
    if (g_perturb) std::memset(p, g_perturb, want);
    std::lock_guard<std::mutex> lock(mu_);
    live_[p] = want;
    stats_.live_bytes += want;
    peak_live_ = std::max<uint64_t>(peak_live_, stats_.live_bytes);
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.live_bytes + stats_.cached_bytes);
    stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
    return p;
  }

  void erase_from_index(std::list<FreeBlock>::iterator pos) {
    auto range = by_size_.equal_range(pos->size);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second == pos) {
        by_size_.erase(it);
        return;
      }
  }

  // Deleter of our blocks, and raw_deleter for raw_allocate users (oneDNN through ideep): a pointer we did not
  // hand out belongs to the fallback allocator.
  static void free_any(void* p) {
    CachingCpuAllocator& a = *instance;
    {
      std::lock_guard<std::mutex> lock(a.mu_);
      auto it = a.live_.find(p);
      if (it != a.live_.end()) {
        const size_t size = it->second;
        a.live_.erase(it);
        a.stats_.live_bytes -= size;
        a.stats_.cached_bytes += size;
        auto pos = a.lru_.insert(a.lru_.end(), FreeBlock{p, size});
        a.by_size_.emplace(size, pos);
        return;
      }
    }
    at::DeleterFnPtr d = a.fallback_->raw_deleter();
    if (d) d(p);
  }

  at::Allocator* fallback_;
  std::mutex mu_;
  std::unordered_map<void*, size_t> live_;
  std::list<FreeBlock> lru_;  // cached blocks, least recently freed first
  std::multimap<size_t, std::list<FreeBlock>::iterator> by_size_;
  MemoryStats stats_;
  uint64_t peak_live_ = 0;  // high-water mark of live bytes: the cache's budget
};

CachingCpuAllocator* CachingCpuAllocator::instance = nullptr;
std::once_flag g_installed;

}  // namespace

void install_memory_policy() {
  std::call_once(g_installed, [] {
    // ROUNDTRIP_MEMORY_POLICY=off leaves glibc's defaults and libtorch's allocator (for A/B measurements).
    if (env_choice("ROUNDTRIP_MEMORY_POLICY", {"on", "off"}) == "off") return;
    g_huge_pages = env_choice("ROUNDTRIP_HUGE_PAGES", {"on", "off"}) == "on";
    if (const char* perturb = std::getenv("ROUNDTRIP_CACHE_PERTURB")) {
      char* end = nullptr;
      const long v = std::strtol(perturb, &end, 0);
      if (!*perturb || *end || v < 0 || v > 255)
        throw Error(std::string("ROUNDTRIP_CACHE_PERTURB: expected a byte value 0-255 (e.g. 113 or 0x71), got '") + perturb + "'");
      g_perturb = static_cast<int>(v);
    }
    // Small blocks (and oneDNN's own buffers) stay in glibc: keep blocks up to 32 MiB out of mmap, and keep up to
    // 64 MiB of freed heap top instead of trimming it after every call.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 20);
    mallopt(M_TOP_PAD, 64 << 20);
    // Leaked on purpose: tensors may be freed during process exit, after static destructors ran.
    CachingCpuAllocator::instance = new CachingCpuAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(CachingCpuAllocator::instance, /*priority=*/1);
  });
}

void release_cached_memory() {
  if (CachingCpuAllocator::instance) CachingCpuAllocator::instance->release_all();
  malloc_trim(0);
}

namespace {
std::atomic<int64_t> g_packed_weight_bytes{0};
}  // namespace

void note_packed_weight_bytes(int64_t delta) { g_packed_weight_bytes += delta; }

MemoryStats memory_stats() {
  MemoryStats s = CachingCpuAllocator::instance ? CachingCpuAllocator::instance->stats() : MemoryStats{};
  s.packed_weight_bytes = static_cast<uint64_t>(std::max<int64_t>(0, g_packed_weight_bytes.load()));
  return s;
}

void reset_peak_memory() {
  if (CachingCpuAllocator::instance) CachingCpuAllocator::instance->reset_peak();
}

}  // namespace rt
