#include "matcher/node_pool.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace matchd::matcher {
namespace {

TEST(NodePoolTest, ReusesAFreedBlockOfTheSameSizeClass) {
  NodePool pool;
  void* a = pool.Allocate(40);
  void* b = pool.Allocate(40);
  EXPECT_NE(a, b);
  const size_t reserved = pool.bytes_reserved();
  EXPECT_GT(reserved, 0u);
  pool.Deallocate(a, 40);
  EXPECT_EQ(pool.Allocate(48), a);  // 40 and 48 share a 48-byte class
  EXPECT_EQ(pool.bytes_reserved(), reserved);
  // Another class does not take it.
  pool.Deallocate(b, 40);
  EXPECT_NE(pool.Allocate(100), b);
}

TEST(NodePoolTest, BlocksAreAlignedAndDisjoint) {
  NodePool pool;
  std::vector<char*> blocks;
  for (int i = 0; i < 1000; ++i) {
    char* p = static_cast<char*>(pool.Allocate(24));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % NodePool::kGranule, 0u);
    std::fill(p, p + 24, static_cast<char>(i));
    blocks.push_back(p);
  }
  for (int i = 0; i < 1000; ++i) {
    for (int j = 0; j < 24; ++j) ASSERT_EQ(blocks[i][j], static_cast<char>(i)) << i;
  }
  for (char* p : blocks) pool.Deallocate(p, 24);
}

TEST(NodePoolTest, HoldsItsHighWaterMark) {
  NodePool pool;
  std::vector<void*> blocks;
  size_t reserved = 0;
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < 500; ++i) blocks.push_back(pool.Allocate(64));
    for (void* p : blocks) pool.Deallocate(p, 64);
    blocks.clear();
    if (round == 0) reserved = pool.bytes_reserved();
  }
  EXPECT_EQ(pool.bytes_reserved(), reserved);
  // Chunks of 16, 32, ... 512 blocks: 1008 blocks of 64 bytes for 500.
  EXPECT_LE(reserved, 1100u * 64);
}

#ifdef ABSL_HAVE_ADDRESS_SANITIZER
TEST(NodePoolDeathTest, UseAfterFreeIsReportedUnderAsan) {
  NodePool pool;
  char* p = static_cast<char*>(pool.Allocate(32));
  p[0] = 1;
  pool.Deallocate(p, 32);
  EXPECT_DEATH(static_cast<volatile char*>(p)[8] = 2, "use-after-poison");
}
#endif

TEST(NodePoolAllocatorTest, ServesSingleNodesAndPassesArraysOn) {
  NodePool pool;
  NodePoolAllocator<int64_t> alloc(&pool);
  int64_t* one = alloc.allocate(1);
  const size_t reserved = pool.bytes_reserved();
  EXPECT_GT(reserved, 0u);
  int64_t* many = alloc.allocate(100);  // operator new
  EXPECT_EQ(pool.bytes_reserved(), reserved);
  alloc.deallocate(many, 100);
  alloc.deallocate(one, 1);

  struct alignas(64) OverAligned {
    char bytes[64];
  };
  NodePoolAllocator<OverAligned> over(alloc);
  OverAligned* o = over.allocate(1);  // operator new: too aligned for a block
  EXPECT_EQ(reinterpret_cast<uintptr_t>(o) % 64, 0u);
  EXPECT_EQ(pool.bytes_reserved(), reserved);
  over.deallocate(o, 1);
}

TEST(NodePoolAllocatorTest, CopiesAndRebindsShareThePool) {
  NodePool pool;
  NodePool other;
  NodePoolAllocator<int> a(&pool);
  NodePoolAllocator<double> b(a);
  EXPECT_TRUE(a == b);
  EXPECT_EQ(b.pool(), &pool);
  EXPECT_TRUE(a != NodePoolAllocator<int>(&other));
}

// Containers churning around a steady size stop taking memory.
TEST(NodePoolAllocatorTest, ContainersReachASteadyState) {
  NodePool pool;
  std::map<int, int, std::less<int>, NodePoolAllocator<std::pair<const int, int>>> map(&pool);
  std::set<std::pair<int, int>, std::less<std::pair<int, int>>,
           NodePoolAllocator<std::pair<int, int>>>
      set(&pool);
  std::unordered_map<int, std::vector<int>, std::hash<int>, std::equal_to<int>,
                     NodePoolAllocator<std::pair<const int, std::vector<int>>>>
      hash(/*bucket_count=*/0, std::hash<int>(), std::equal_to<int>(), &pool);
  auto churn = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      map[i] = -i;
      set.insert({i % 7, i});
      hash[i].push_back(i);
      if (i >= 200) {
        ASSERT_EQ(map.erase(i - 200), 1u);
        ASSERT_EQ(set.erase({(i - 200) % 7, i - 200}), 1u);
        ASSERT_EQ(hash.erase(i - 200), 1u);
      }
    }
  };
  churn(0, 1000);
  const size_t reserved = pool.bytes_reserved();
  churn(1000, 20000);
  EXPECT_EQ(pool.bytes_reserved(), reserved);
  ASSERT_EQ(map.size(), 200u);
  ASSERT_EQ(set.size(), 200u);
  ASSERT_EQ(hash.size(), 200u);
  for (int i = 19800; i < 20000; ++i) {
    EXPECT_EQ(map.at(i), -i);
    EXPECT_EQ(set.count({i % 7, i}), 1u);
    EXPECT_EQ(hash.at(i), std::vector<int>{i});
  }
}

}  // namespace
}  // namespace matchd::matcher
