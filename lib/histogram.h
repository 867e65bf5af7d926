#ifndef PYHOT_HISTOGRAM_H
#define PYHOT_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/*
 * A fixed-size log-linear histogram of durations in milliseconds (the layout of
 * HdrHistogram with a precision of 3 bits): each power of two of microseconds is split in
 * HISTOGRAM_SUB equal buckets, so a bucket is at most 12.5 % wide and a percentile read
 * from it is never more than 12.5 % above the true value (it is also clamped to the
 * exact minimum and maximum). Values from 0 to 2^HISTOGRAM_OCTAVES microseconds (about
 * 12.7 days) are told apart; larger ones land in the last bucket. Constant memory, no
 * allocation, O(1) insertion; pure (no I/O), loop thread or any single thread.
 */
#define HISTOGRAM_SUB 8
#define HISTOGRAM_OCTAVES 40
#define HISTOGRAM_BUCKETS (1 + HISTOGRAM_OCTAVES * HISTOGRAM_SUB)

struct histogram {
    uint64_t count;
    double sum_ms;
    double min_ms, max_ms;
    uint64_t buckets[HISTOGRAM_BUCKETS];
};

/* Empties h. A zero-filled struct histogram is empty too. */
void histogram_init(struct histogram *h);

/* Adds one value, in ms; negative values and NaN count as 0. */
void histogram_add(struct histogram *h, double ms);

/* The value (ms) below which p percent of the values lie (nearest rank, 0 < p <= 100),
 * read as the upper bound of its bucket and clamped to [min, max]; 0 when empty. */
double histogram_percentile(const struct histogram *h, double p);

/* The bounds of bucket i in ms: [*from, *to). */
void histogram_bucket_bounds(size_t i, double *from, double *to);

/* {"count", "min", "max", "mean", "p50", "p90", "p99", "buckets": [{"from", "to",
 * "count"}, ...]} with every bucket from the first non-empty one to the last (empty ones
 * between them included); min..p99 are null and buckets empty when count is 0. Values in
 * ms. Returns a new reference, or NULL on ENOMEM. */
json_t *histogram_to_json(const struct histogram *h);

#endif
