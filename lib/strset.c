#include "strset.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STRSET_MIN_SLOTS 16
#define STRSET_MIN_ITEMS 8

static uint64_t fnv1a(const char *s) {
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return h;
}

/* The slot holding s, or the empty slot where it would go. n_slots must be non-zero. */
static size_t find_slot(const struct strset *set, const char *s, uint64_t hash) {
    size_t mask = set->n_slots - 1;
    size_t i = (size_t)hash & mask;
    while (set->slots[i] != 0 && strcmp(set->items[set->slots[i] - 1], s) != 0)
        i = (i + 1) & mask;
    return i;
}

static int rehash(struct strset *set, size_t n_slots) {
    size_t *slots = calloc(n_slots, sizeof(*slots));
    if (slots == NULL)
        return -ENOMEM;
    size_t mask = n_slots - 1;
    for (size_t k = 0; k < set->len; k++) {
        size_t i = (size_t)fnv1a(set->items[k]) & mask;
        while (slots[i] != 0)
            i = (i + 1) & mask;
        slots[i] = k + 1;
    }
    free(set->slots);
    set->slots = slots;
    set->n_slots = n_slots;
    return 0;
}

void strset_init(struct strset *set) {
    memset(set, 0, sizeof(*set));
}

int strset_add(struct strset *set, const char *s) {
    uint64_t hash = fnv1a(s);
    if (set->n_slots > 0 && set->slots[find_slot(set, s, hash)] != 0)
        return 0;

    /* Make room in both arrays before changing anything, so -ENOMEM leaves the set as
     * it was. */
    if ((set->len + 1) * 2 > set->n_slots) {
        size_t n = set->n_slots > 0 ? set->n_slots * 2 : STRSET_MIN_SLOTS;
        if (n < set->n_slots)
            return -ENOMEM;
        int r = rehash(set, n);
        if (r < 0)
            return r;
    }
    if (set->len == set->cap) {
        size_t cap = set->cap > 0 ? set->cap * 2 : STRSET_MIN_ITEMS;
        if (cap < set->cap || cap > SIZE_MAX / sizeof(char *))
            return -ENOMEM;
        char **items = realloc(set->items, cap * sizeof(*items));
        if (items == NULL)
            return -ENOMEM;
        set->items = items;
        set->cap = cap;
    }
    char *copy = strdup(s);
    if (copy == NULL)
        return -ENOMEM;

    set->items[set->len++] = copy;
    set->slots[find_slot(set, s, hash)] = set->len;
    return 1;
}

bool strset_contains(const struct strset *set, const char *s) {
    if (set->n_slots == 0)
        return false;
    return set->slots[find_slot(set, s, fnv1a(s))] != 0;
}

char **strset_steal(struct strset *set, size_t *len) {
    char **items = set->items;
    size_t n = set->len;
    free(set->slots);
    strset_init(set);
    if (len != NULL)
        *len = n;
    if (n == 0) {
        free(items);
        return NULL;
    }
    return items;
}

void strset_clear(struct strset *set) {
    for (size_t k = 0; k < set->len; k++)
        free(set->items[k]);
    free(set->items);
    free(set->slots);
    strset_init(set);
}
