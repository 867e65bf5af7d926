#ifndef PYHOT_STRSET_H
#define PYHOT_STRSET_H

#include <stdbool.h>
#include <stddef.h>

/*
 * A set of strings that keeps insertion order: an open-addressing hash index over an
 * array. Used to collect the paths of a batch (each once, in the order first seen).
 */
struct strset {
    char **items;     /* owned copies, insertion order */
    size_t len;
    size_t cap;
    size_t *slots;    /* index+1 into items, 0 = empty; size is a power of two */
    size_t n_slots;
};

/* Initialises an empty set; no allocation until the first add. */
void strset_init(struct strset *set);

/* Adds a copy of s. Returns 1 when added, 0 when already present, -ENOMEM. */
int strset_add(struct strset *set, const char *s);

/* true when s is in the set. */
bool strset_contains(const struct strset *set, const char *s);

/* Moves the items array out (caller frees each string and the array, and owns *len);
 * the set is left empty and reusable. Returns NULL when empty. */
char **strset_steal(struct strset *set, size_t *len);

/* Frees every item and the index; the set is left empty and reusable. */
void strset_clear(struct strset *set);

#endif
