// FlatTable against std::unordered_map: random inserts, finds and erases on
// a small table (long probe chains, wrap-around at the end of the array,
// backward-shift deletion across it), growth, the half-full bound, a key
// inserted twice, for_each and clear.
#include <gtest/gtest.h>

#include <random>
#include <unordered_map>

#include "vdma/base/flat_table.h"

namespace vdma {
namespace {

struct Slot {
  uint64_t key = 0;  // 0: empty
  uint64_t value = 0;
};
struct Traits {
  static bool empty(const Slot& s) noexcept { return s.key == 0; }
  static uint64_t hash(const Slot& s) noexcept { return s.key; }
};
// Every key hashes to one of 4 homes: chains are long and cross the end.
struct Clumped {
  static bool empty(const Slot& s) noexcept { return s.key == 0; }
  static uint64_t hash(const Slot& s) noexcept { return s.key % 4; }
};

template <class T>
void random_against_a_map(uint64_t seed, bool grows) {
  FlatTable<Slot, T> t(16);
  std::unordered_map<uint64_t, uint64_t> model;
  std::mt19937_64 rng(seed);
  for (int step = 0; step < 20000; ++step) {
    const uint64_t k = 1 + rng() % 40;
    auto same = [k](const Slot& s) { return s.key == k; };
    const uint64_t h = T::hash(Slot{k, 0});
    switch (rng() % 3) {
      case 0: {  // insert
        if (!t.has_room()) {
          if (!grows) {
            ASSERT_EQ(model.size() + 1, t.capacity() / 2 + 1) << "refused before half full";
            break;
          }
          t.grow();
        }
        Slot* placed = t.insert(Slot{k, static_cast<uint64_t>(step)}, same);
        if (model.contains(k)) {
          ASSERT_EQ(placed, nullptr) << "key " << k << " inserted twice";
        } else {
          ASSERT_NE(placed, nullptr);
          EXPECT_EQ(placed->key, k);
          model[k] = static_cast<uint64_t>(step);
        }
        break;
      }
      case 1: {  // erase
        Slot* s = t.find(h, same);
        ASSERT_EQ(s != nullptr, model.contains(k)) << "key " << k;
        if (s != nullptr) {
          t.erase(s);
          model.erase(k);
        }
        break;
      }
      default: {  // find
        Slot* s = t.find(h, same);
        ASSERT_EQ(s != nullptr, model.contains(k)) << "key " << k;
        if (s != nullptr) {
          EXPECT_EQ(s->value, model[k]);
        }
      }
    }
    ASSERT_EQ(t.size(), model.size());
    ASSERT_LE(t.size() * 2, t.capacity());
  }
  // Every key the model holds is found, and nothing else is there.
  size_t seen = 0;
  t.for_each([&](const Slot& s) {
    ++seen;
    ASSERT_TRUE(model.contains(s.key));
    EXPECT_EQ(s.value, model[s.key]);
  });
  EXPECT_EQ(seen, model.size());
  t.clear();
  EXPECT_EQ(t.size(), 0u);
  for (uint64_t k = 1; k <= 40; ++k) {
    EXPECT_EQ(t.find(T::hash(Slot{k, 0}), [k](const Slot& s) { return s.key == k; }), nullptr);
  }
}

TEST(FlatTable, MatchesAMapUnderRandomChurnWithGrowth) {
  for (uint64_t seed = 1; seed <= 3; ++seed) random_against_a_map<Traits>(seed, true);
}

TEST(FlatTable, MatchesAMapWithClumpedHomesAndAFixedCapacity) {
  for (uint64_t seed = 1; seed <= 3; ++seed) random_against_a_map<Clumped>(seed, false);
}

TEST(FlatTable, CapacityIsAPowerOfTwoAndGrowKeepsEverySlot) {
  FlatTable<Slot, Traits> t(5);
  EXPECT_EQ(t.capacity(), 8u);
  for (uint64_t k = 1; k <= 4; ++k) {
    ASSERT_TRUE(t.has_room());
    ASSERT_NE(t.insert(Slot{k, k * 10}, [k](const Slot& s) { return s.key == k; }), nullptr);
  }
  EXPECT_FALSE(t.has_room());
  t.grow();
  EXPECT_EQ(t.capacity(), 16u);
  EXPECT_EQ(t.size(), 4u);
  for (uint64_t k = 1; k <= 4; ++k) {
    const Slot* s = t.find(k, [k](const Slot& x) { return x.key == k; });
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->value, k * 10);
  }
}

}  // namespace
}  // namespace vdma
