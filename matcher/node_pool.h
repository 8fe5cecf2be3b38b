// Recycled memory for the nodes of node-based standard containers
// (std::map, std::set, std::unordered_map), so that a container whose size
// hovers around a steady level stops allocating: a node freed by an erase is
// handed to the next insert of the same size.
//
//   NodePool nodes;  // outlives the containers below
//   std::map<int, int, std::less<int>, NodePoolAllocator<std::pair<const int, int>>> m(&nodes);
//
// Single-object allocations of up to NodePool::kMaxBlockSize bytes come from
// a free list per size class (multiples of 16 bytes), refilled from chunks of
// growing size taken from operator new. Anything else (arrays such as an
// unordered_map's buckets, over-aligned types, large objects) goes straight
// to operator new / operator delete. Memory taken for nodes is only given
// back when the NodePool is destroyed: the pool keeps its high-water mark.
//
// Ownership and threads: a NodePool owns its chunks and must outlive every
// container and allocator that uses it. It is not thread-safe; the
// containers sharing one must all belong to one thread at a time (here: one
// matcher::Pool). Under AddressSanitizer, free blocks are poisoned, so a use
// after free of a node is reported as it would be with operator new.
#ifndef MATCHD_MATCHER_NODE_POOL_H_
#define MATCHD_MATCHER_NODE_POOL_H_

#include <array>
#include <cstddef>
#include <memory>
#include <new>

#include "absl/base/config.h"

#ifdef ABSL_HAVE_ADDRESS_SANITIZER
#include <sanitizer/asan_interface.h>
#endif

namespace matchd::matcher {

class NodePool {
 public:
  // Blocks are multiples of kGranule bytes and aligned to it.
  static constexpr size_t kGranule = 16;
  static constexpr size_t kMaxBlockSize = 256;
  // Blocks per chunk: the first chunk of a size class holds kFirstChunkBlocks,
  // each later one twice as many as the one before, up to kMaxChunkBlocks.
  static constexpr size_t kFirstChunkBlocks = 16;
  static constexpr size_t kMaxChunkBlocks = 4096;

  // Whether a single object of this size and alignment is served from the
  // free lists (otherwise: operator new).
  static constexpr bool Serves(size_t size, size_t align) {
    return size <= kMaxBlockSize && align <= kGranule;
  }

  NodePool() = default;
  NodePool(const NodePool&) = delete;
  NodePool& operator=(const NodePool&) = delete;
  ~NodePool() {
    while (chunks_ != nullptr) {
      Chunk* next = chunks_->next;
      Unpoison(chunks_, chunks_->bytes);
      ::operator delete(chunks_);
      chunks_ = next;
    }
  }

  // A block of at least `size` bytes (1..kMaxBlockSize), aligned to kGranule.
  void* Allocate(size_t size) {
    SizeClass& sc = classes_[ClassOf(size)];
    if (sc.free == nullptr) Refill(sc, BlockSizeOf(size));
    FreeBlock* block = sc.free;
    Unpoison(block, BlockSizeOf(size));
    sc.free = block->next;
    return block;
  }

  // Returns a block from Allocate(size), with the same `size`.
  void Deallocate(void* p, size_t size) noexcept {
    SizeClass& sc = classes_[ClassOf(size)];
    FreeBlock* block = static_cast<FreeBlock*>(p);
    block->next = sc.free;
    sc.free = block;
    Poison(block, BlockSizeOf(size));
  }

  // Bytes taken from operator new for blocks so far.
  size_t bytes_reserved() const { return bytes_reserved_; }

 private:
  struct FreeBlock {
    FreeBlock* next;
  };
  // Header of a chunk from operator new; its blocks follow.
  struct alignas(kGranule) Chunk {
    Chunk* next;
    size_t bytes;  // of the whole chunk, header included
  };
  // Chunks come from operator new, so blocks after the header are aligned.
  static_assert(kGranule <= __STDCPP_DEFAULT_NEW_ALIGNMENT__ && sizeof(Chunk) % kGranule == 0);
  struct SizeClass {
    FreeBlock* free = nullptr;
    size_t next_chunk_blocks = kFirstChunkBlocks;
  };
  static constexpr size_t kClasses = kMaxBlockSize / kGranule;

  static constexpr size_t ClassOf(size_t size) { return (size + kGranule - 1) / kGranule - 1; }
  static constexpr size_t BlockSizeOf(size_t size) { return (ClassOf(size) + 1) * kGranule; }

  // Carves a new chunk into free blocks of `block_size` bytes.
  void Refill(SizeClass& sc, size_t block_size) {
    const size_t blocks = sc.next_chunk_blocks;
    if (sc.next_chunk_blocks < kMaxChunkBlocks) sc.next_chunk_blocks *= 2;
    const size_t bytes = sizeof(Chunk) + blocks * block_size;
    Chunk* chunk = static_cast<Chunk*>(::operator new(bytes));
    chunk->next = chunks_;
    chunk->bytes = bytes;
    chunks_ = chunk;
    bytes_reserved_ += bytes;
    char* first = reinterpret_cast<char*>(chunk + 1);
    // Linked in address order, so that a fresh chunk is used front to back.
    for (size_t i = blocks; i-- > 0;) {
      FreeBlock* block = reinterpret_cast<FreeBlock*>(first + i * block_size);
      block->next = sc.free;
      sc.free = block;
    }
    Poison(first, blocks * block_size);
  }

  static void Poison(void* p, size_t bytes) {
#ifdef ABSL_HAVE_ADDRESS_SANITIZER
    ASAN_POISON_MEMORY_REGION(p, bytes);
#else
    (void)p;
    (void)bytes;
#endif
  }
  static void Unpoison(void* p, size_t bytes) {
#ifdef ABSL_HAVE_ADDRESS_SANITIZER
    ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
    (void)p;
    (void)bytes;
#endif
  }

  std::array<SizeClass, kClasses> classes_;
  Chunk* chunks_ = nullptr;  // every chunk, newest first
  size_t bytes_reserved_ = 0;
};

// A standard allocator over a NodePool: single objects the pool serves come
// from its free lists, everything else from operator new. Copies (and
// rebinds) share the pool and compare equal; the pool is not owned.
template <typename T>
class NodePoolAllocator {
 public:
  using value_type = T;

  // Not explicit: a container's constructor can take any rebind of it.
  NodePoolAllocator(NodePool* pool) noexcept : pool_(pool) {}  // NOLINT(runtime/explicit)
  template <typename U>
  NodePoolAllocator(const NodePoolAllocator<U>& other) noexcept : pool_(other.pool()) {}

  T* allocate(size_t n) {
    if (n == 1 && NodePool::Serves(sizeof(T), alignof(T))) {
      return static_cast<T*>(pool_->Allocate(sizeof(T)));
    }
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, size_t n) noexcept {
    if (n == 1 && NodePool::Serves(sizeof(T), alignof(T))) {
      pool_->Deallocate(p, sizeof(T));
    } else {
      std::allocator<T>().deallocate(p, n);
    }
  }

  NodePool* pool() const { return pool_; }

  template <typename U>
  bool operator==(const NodePoolAllocator<U>& other) const {
    return pool_ == other.pool();
  }
  template <typename U>
  bool operator!=(const NodePoolAllocator<U>& other) const {
    return pool_ != other.pool();
  }

 private:
  NodePool* pool_;
};

}  // namespace matchd::matcher

#endif  // MATCHD_MATCHER_NODE_POOL_H_
