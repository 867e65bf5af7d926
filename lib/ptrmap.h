#ifndef PYHOT_PTRMAP_H
#define PYHOT_PTRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * An index of pointers by a 64-bit hash the caller computes: open addressing with linear
 * probing, grown (doubled) before an insert would fill more than 3/4 of the slots, and
 * deletion by backward shift (Knuth, TAOCP vol. 3, 6.4, Algorithm R), so no tombstones and
 * probe runs stay as short as if the deleted item had never been there.
 *
 * The map holds pointers only: it never allocates, copies or frees an item. It asks the
 * hash callback for an item's hash whenever it needs it (insert, growth, delete), so the
 * item's hash must not change while the item is in the map; an item caches its own hash
 * when computing it is dear (the poll watcher's path hashes). An item is found by a match
 * callback, which compares it with a key of the caller's type.
 *
 * Slot positions are the hash's low bits: the same inserts and deletes give the same
 * layout, and the iteration order of ptrmap_next with it.
 */
struct ptrmap {
    void **slots;        /* n_slots entries, NULL = empty */
    size_t n_slots;      /* a power of two, or 0 before the first insert */
    size_t len;          /* items held; read it, never write it */
    size_t min_slots;    /* slots of the first allocation */
    uint64_t (*hash)(const void *item);
};

/* The caller's comparison of an item held in the map with the key of a ptrmap_find:
 * true when item is the one key names. */
typedef bool ptrmap_match_fn(const void *item, const void *key);

/* Initialises an empty map; nothing is allocated until the first insert.
 * min_slots: the size of the first slot array (a power of two, at least 2), which then
 * holds up to 3/4 of min_slots items before it doubles; it sets the map's smallest
 * footprint, min_slots * sizeof(void *) bytes.
 * hash: gives an item's hash; called by insert and remove, never by find; it must give
 * the same value for an item as long as the item is in the map. */
void ptrmap_init(struct ptrmap *m, size_t min_slots, uint64_t (*hash)(const void *item));

/* The item for which match(item, key) is true among the items whose hash is hash, or NULL.
 * Only the items of hash's probe run are compared; match may compare the hashes first
 * (cheaply, when the item caches its own) before a dearer comparison. */
void *ptrmap_find(const struct ptrmap *m, uint64_t hash, ptrmap_match_fn *match,
                  const void *key);

/* Adds item (not NULL; the map borrows it: the caller keeps ownership and must remove it
 * before freeing it). The caller checks with ptrmap_find first when the key may already be
 * present: the map does not (an item inserted twice is held twice).
 * Returns 0, or -ENOMEM when the slot array could not grow; the map is then as it was. */
int ptrmap_insert(struct ptrmap *m, void *item);

/* Removes item itself (found by pointer, at its hash's probe run), moving the items that
 * follow it in the run back into the hole. The item is not freed.
 * Returns true when item was in the map, false when it was not (the map is unchanged). */
bool ptrmap_remove(struct ptrmap *m, const void *item);

/* Iteration in slot order: the first item at slot *pos or after, or NULL when there is
 * none; *pos is then moved past the item (start with *pos = 0). An insert or remove
 * during an iteration moves items between slots: restart with *pos = 0 after one, or
 * collect the items first and change the map after the iteration. */
void *ptrmap_next(const struct ptrmap *m, size_t *pos);

/* Frees the slot array, not the items (free them first, iterating with ptrmap_next).
 * The map is left empty and reusable with the same min_slots and hash. */
void ptrmap_clear(struct ptrmap *m);

#endif
