/*
 * Unit tests of lib/ptrmap.c: growth at 3/4 load, colliding hashes sharing one probe run
 * (and wrapping past the last slot), a delete in the middle of a run that moves exactly
 * the items whose home is not between the hole and them, lookups after many deletes
 * checked against a plain array, and clear leaving a reusable map. Hashes are chosen by
 * the test, so every slot an item lands in is known in advance.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>

#include "ptrmap.h"

struct item {
    uint64_t hash;
    int id;
};

static uint64_t item_hash(const void *item) {
    return ((const struct item *)item)->hash;
}

static bool item_matches(const void *item, const void *key) {
    return ((const struct item *)item)->id == *(const int *)key;
}

static struct item *find(const struct ptrmap *m, uint64_t hash, int id) {
    return ptrmap_find(m, hash, item_matches, &id);
}

/* The slot item occupies, or -1 when it is not in the map. */
static long slot_of(const struct ptrmap *m, const struct item *item) {
    size_t pos = 0;
    for (void *it; (it = ptrmap_next(m, &pos));)
        if (it == item)
            return (long)pos - 1;
    return -1;
}

static void test_empty(void **state) {
    (void)state;
    struct ptrmap m;
    ptrmap_init(&m, 8, item_hash);
    struct item a = {1, 1};
    size_t pos = 0;
    assert_null(find(&m, 1, 1));
    assert_false(ptrmap_remove(&m, &a));
    assert_null(ptrmap_next(&m, &pos));
    assert_int_equal(m.len, 0);
    assert_int_equal(m.n_slots, 0); /* nothing allocated before the first insert */
    ptrmap_clear(&m);
}

/* min_slots 8 holds 6 items (3/4); the 7th doubles to 16, the 13th to 32, and every
 * item is re-placed at its hash's low bits in the new size. */
static void test_grow_at_three_quarters(void **state) {
    (void)state;
    enum { N = 13 };
    struct item items[N];
    struct ptrmap m;
    ptrmap_init(&m, 8, item_hash);
    for (int i = 0; i < N; i++) {
        items[i] = (struct item){(uint64_t)i * 9, i}; /* 0, 9, 18, ...: distinct mod 32 */
        assert_int_equal(ptrmap_insert(&m, &items[i]), 0);
        assert_int_equal(m.len, i + 1);
        assert_int_equal(m.n_slots, i + 1 <= 6 ? 8 : i + 1 <= 12 ? 16 : 32);
        for (int k = 0; k <= i; k++)
            assert_ptr_equal(find(&m, items[k].hash, k), &items[k]);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(slot_of(&m, &items[i]), (long)(items[i].hash & 31));
    ptrmap_clear(&m);
}

/* Items with one home share its probe run in insertion order; a run that reaches the
 * last slot continues at slot 0. */
static void test_collisions(void **state) {
    (void)state;
    struct item run[4] = {{5, 0}, {21, 1}, {37, 2}, {5, 3}};    /* all home 5 of 16 */
    struct item wrap[3] = {{15, 4}, {31, 5}, {0, 6}};           /* 15, then 0, then 1 */
    struct ptrmap m;
    ptrmap_init(&m, 16, item_hash);
    for (int i = 0; i < 4; i++)
        assert_int_equal(ptrmap_insert(&m, &run[i]), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ptrmap_insert(&m, &wrap[i]), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(slot_of(&m, &run[i]), 5 + i);
        assert_ptr_equal(find(&m, run[i].hash, run[i].id), &run[i]);
    }
    assert_int_equal(slot_of(&m, &wrap[0]), 15);
    assert_int_equal(slot_of(&m, &wrap[1]), 0);
    assert_int_equal(slot_of(&m, &wrap[2]), 1);
    for (int i = 0; i < 3; i++)
        assert_ptr_equal(find(&m, wrap[i].hash, wrap[i].id), &wrap[i]);
    /* Absent keys: the probe stops at the end of the run. */
    assert_null(find(&m, 5, 99));
    assert_null(find(&m, 15, 99));
    assert_null(find(&m, 3, 0)); /* id 0 is present, but not in slot 3's (empty) run */
    assert_int_equal(m.len, 7);
    ptrmap_clear(&m);
}

/* Removing from the middle of a run moves back only the items whose home is not in
 * (hole, their slot]; an item at its own home stays. */
static void test_delete_mid_run(void **state) {
    (void)state;
    struct item a = {5, 0}, b = {5, 1}, x = {7, 2}, c = {5, 3};
    struct ptrmap m;
    ptrmap_init(&m, 16, item_hash);
    assert_int_equal(ptrmap_insert(&m, &a), 0);
    assert_int_equal(ptrmap_insert(&m, &b), 0);
    assert_int_equal(ptrmap_insert(&m, &x), 0);
    assert_int_equal(ptrmap_insert(&m, &c), 0);
    assert_int_equal(slot_of(&m, &x), 7);
    assert_int_equal(slot_of(&m, &c), 8);

    assert_true(ptrmap_remove(&m, &b));
    assert_int_equal(m.len, 3);
    assert_int_equal(slot_of(&m, &a), 5);
    assert_int_equal(slot_of(&m, &c), 6); /* moved into b's hole */
    assert_int_equal(slot_of(&m, &x), 7); /* at home: stays */
    assert_int_equal(slot_of(&m, &b), -1);
    assert_null(find(&m, 5, 1));
    assert_ptr_equal(find(&m, 5, 0), &a);
    assert_ptr_equal(find(&m, 5, 3), &c);
    assert_ptr_equal(find(&m, 7, 2), &x);

    /* Removed again, or never there (same hash as a present item): nothing changes. */
    assert_false(ptrmap_remove(&m, &b));
    struct item stranger = {5, 0};
    assert_false(ptrmap_remove(&m, &stranger));
    assert_int_equal(m.len, 3);
    assert_int_equal(slot_of(&m, &a), 5);
    ptrmap_clear(&m);
}

/* The same across the end of the slot array: the hole at 15, items at 0 and 1. */
static void test_delete_across_wrap(void **state) {
    (void)state;
    struct item p = {14, 0}, q = {14, 1}, r = {14, 2}, s = {0, 3}, t = {14, 4};
    struct ptrmap m;
    ptrmap_init(&m, 16, item_hash);
    struct item *order[] = {&p, &q, &r, &s};
    for (int i = 0; i < 4; i++)
        assert_int_equal(ptrmap_insert(&m, order[i]), 0);
    assert_int_equal(slot_of(&m, &r), 0);
    assert_int_equal(slot_of(&m, &s), 1);

    assert_true(ptrmap_remove(&m, &p));
    assert_int_equal(slot_of(&m, &q), 14);
    assert_int_equal(slot_of(&m, &r), 15);
    assert_int_equal(slot_of(&m, &s), 0); /* its home was free again */
    assert_ptr_equal(find(&m, 14, 2), &r);
    assert_ptr_equal(find(&m, 0, 3), &s);

    /* s sits at home 0 while the hole opens at 15: it stays. */
    assert_int_equal(ptrmap_insert(&m, &t), 0);   /* 14, 15 taken, 0 taken: lands at 1 */
    assert_int_equal(slot_of(&m, &t), 1);
    assert_true(ptrmap_remove(&m, &r));           /* hole at 15 */
    assert_int_equal(slot_of(&m, &s), 0);
    assert_int_equal(slot_of(&m, &t), 15);        /* home 14: moved back over the wrap */
    assert_ptr_equal(find(&m, 14, 4), &t);
    assert_ptr_equal(find(&m, 0, 3), &s);
    assert_int_equal(m.len, 3);
    ptrmap_clear(&m);
}

/* Thousands of inserts and removes with a poor hash (long runs), checked against a plain
 * array after each round: every present item found, every removed one not, len exact. */
static void test_lookups_after_deletes(void **state) {
    (void)state;
    enum { N = 4000 };
    struct item *items = calloc(N, sizeof(*items));
    bool in[N] = {false};
    assert_non_null(items);
    struct ptrmap m;
    ptrmap_init(&m, 16, item_hash);
    uint32_t rng = 12345;
    size_t expected = 0;
    for (int i = 0; i < N; i++)
        items[i] = (struct item){(uint64_t)(i % 61) * 64, i}; /* 61 homes at most */
    for (int round = 0; round < 6; round++) {
        for (int step = 0; step < N; step++) {
            rng = rng * 1103515245u + 12345u;
            int i = (int)((rng >> 8) % N);
            if (in[i]) {
                assert_true(ptrmap_remove(&m, &items[i]));
                expected--;
            } else {
                assert_int_equal(ptrmap_insert(&m, &items[i]), 0);
                expected++;
            }
            in[i] = !in[i];
        }
        assert_int_equal(m.len, expected);
        size_t seen = 0, pos = 0;
        for (struct item *it; (it = ptrmap_next(&m, &pos));) {
            assert_true(in[it->id]);
            seen++;
        }
        assert_int_equal(seen, expected);
        for (int i = 0; i < N; i++) {
            if (in[i])
                assert_ptr_equal(find(&m, items[i].hash, i), &items[i]);
            else
                assert_null(find(&m, items[i].hash, i));
        }
    }
    ptrmap_clear(&m);
    free(items);
}

static void test_clear_and_reuse(void **state) {
    (void)state;
    struct item a = {3, 0}, b = {3, 1};
    struct ptrmap m;
    ptrmap_init(&m, 4, item_hash);
    for (int round = 0; round < 2; round++) {
        assert_int_equal(ptrmap_insert(&m, &a), 0);
        assert_int_equal(ptrmap_insert(&m, &b), 0);
        assert_int_equal(m.n_slots, 4);
        assert_ptr_equal(find(&m, 3, 1), &b);
        ptrmap_clear(&m);
        assert_int_equal(m.len, 0);
        assert_int_equal(m.n_slots, 0);
        assert_null(find(&m, 3, 1));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_grow_at_three_quarters),
        cmocka_unit_test(test_collisions),
        cmocka_unit_test(test_delete_mid_run),
        cmocka_unit_test(test_delete_across_wrap),
        cmocka_unit_test(test_lookups_after_deletes),
        cmocka_unit_test(test_clear_and_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
