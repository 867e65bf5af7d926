#include "ptrmap.h"

#include <errno.h>
#include <stdlib.h>

void ptrmap_init(struct ptrmap *m, size_t min_slots, uint64_t (*hash)(const void *item)) {
    m->slots = NULL;
    m->n_slots = 0;
    m->len = 0;
    m->min_slots = min_slots;
    m->hash = hash;
}

void *ptrmap_find(const struct ptrmap *m, uint64_t hash, ptrmap_match_fn *match,
                  const void *key) {
    if (m->n_slots == 0)
        return NULL;
    size_t mask = m->n_slots - 1;
    for (size_t i = (size_t)hash & mask; m->slots[i]; i = (i + 1) & mask)
        if (match(m->slots[i], key))
            return m->slots[i];
    return NULL;
}

/* The empty slot of item's probe run in slots (mask + 1 of them, one at least empty). */
static size_t free_slot(void *const *slots, size_t mask, uint64_t hash) {
    size_t i = (size_t)hash & mask;
    while (slots[i])
        i = (i + 1) & mask;
    return i;
}

int ptrmap_insert(struct ptrmap *m, void *item) {
    if ((m->len + 1) * 4 > m->n_slots * 3) {
        size_t size = m->n_slots ? m->n_slots * 2 : m->min_slots;
        if (size > SIZE_MAX / sizeof(void *) / 4)
            return -ENOMEM;
        void **slots = calloc(size, sizeof(*slots));
        if (!slots)
            return -ENOMEM;
        for (size_t k = 0; k < m->n_slots; k++)
            if (m->slots[k])
                slots[free_slot(slots, size - 1, m->hash(m->slots[k]))] = m->slots[k];
        free(m->slots);
        m->slots = slots;
        m->n_slots = size;
    }
    m->slots[free_slot(m->slots, m->n_slots - 1, m->hash(item))] = item;
    m->len++;
    return 0;
}

bool ptrmap_remove(struct ptrmap *m, const void *item) {
    if (m->n_slots == 0)
        return false;
    size_t mask = m->n_slots - 1;
    size_t i = (size_t)m->hash(item) & mask;
    while (m->slots[i] && m->slots[i] != item)
        i = (i + 1) & mask;
    if (!m->slots[i])
        return false;
    m->slots[i] = NULL;
    m->len--;
    for (size_t j = (i + 1) & mask; m->slots[j]; j = (j + 1) & mask) {
        size_t home = (size_t)m->hash(m->slots[j]) & mask;
        /* Move slots[j] into the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            m->slots[i] = m->slots[j];
            m->slots[j] = NULL;
            i = j;
        }
    }
    return true;
}

void *ptrmap_next(const struct ptrmap *m, size_t *pos) {
    for (size_t i = *pos; i < m->n_slots; i++) {
        if (m->slots[i]) {
            *pos = i + 1;
            return m->slots[i];
        }
    }
    *pos = m->n_slots;
    return NULL;
}

void ptrmap_clear(struct ptrmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->n_slots = 0;
    m->len = 0;
}
