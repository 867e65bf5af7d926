/*
 * Log-linear histogram of durations (histogram.h). Bucket 0 holds values under 1 us;
 * bucket 1 + e * SUB + s holds [2^e * (1 + s/SUB), 2^e * (1 + (s+1)/SUB)) us.
 */
#include "histogram.h"

#include <math.h>
#include <string.h>

void histogram_init(struct histogram *h) {
    memset(h, 0, sizeof(*h));
}

static size_t bucket_of(double us) {
    if (!(us >= 1.0))
        return 0;
    int exp;
    double m = frexp(us, &exp); /* us = m * 2^exp, m in [0.5, 1) */
    int e = exp - 1;
    if (e >= HISTOGRAM_OCTAVES)
        return HISTOGRAM_BUCKETS - 1;
    int s = (int)((2.0 * m - 1.0) * HISTOGRAM_SUB);
    if (s >= HISTOGRAM_SUB)
        s = HISTOGRAM_SUB - 1;
    return 1 + (size_t)e * HISTOGRAM_SUB + (size_t)s;
}

void histogram_bucket_bounds(size_t i, double *from, double *to) {
    if (i == 0) {
        *from = 0.0;
        *to = 0.001;
        return;
    }
    size_t e = (i - 1) / HISTOGRAM_SUB, s = (i - 1) % HISTOGRAM_SUB;
    double base = ldexp(1.0, (int)e);
    *from = base * (1.0 + (double)s / HISTOGRAM_SUB) / 1000.0;
    *to = base * (1.0 + (double)(s + 1) / HISTOGRAM_SUB) / 1000.0;
}

void histogram_add(struct histogram *h, double ms) {
    if (!(ms > 0.0))
        ms = 0.0;
    if (h->count == 0 || ms < h->min_ms)
        h->min_ms = ms;
    if (h->count == 0 || ms > h->max_ms)
        h->max_ms = ms;
    h->count++;
    h->sum_ms += ms;
    h->buckets[bucket_of(ms * 1000.0)]++;
}

double histogram_percentile(const struct histogram *h, double p) {
    if (h->count == 0)
        return 0.0;
    if (p > 100.0)
        p = 100.0;
    uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < HISTOGRAM_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            double from, to;
            histogram_bucket_bounds(i, &from, &to);
            if (to > h->max_ms)
                to = h->max_ms;
            if (to < h->min_ms)
                to = h->min_ms;
            return to;
        }
    }
    return h->max_ms;
}

json_t *histogram_to_json(const struct histogram *h) {
    json_t *buckets = json_array();
    if (!buckets)
        return NULL;
    if (h->count > 0) {
        size_t first = 0, last = HISTOGRAM_BUCKETS - 1;
        while (h->buckets[first] == 0)
            first++;
        while (h->buckets[last] == 0)
            last--;
        for (size_t i = first; i <= last; i++) {
            double from, to;
            histogram_bucket_bounds(i, &from, &to);
            json_array_append_new(buckets, json_pack("{s:f, s:f, s:I}", "from", from, "to", to,
                                                     "count", (json_int_t)h->buckets[i]));
        }
    }
#define VALUE(x) (h->count ? json_real(x) : json_null())
    return json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "count", (json_int_t)h->count,
                     "min", VALUE(h->min_ms), "max", VALUE(h->max_ms),
                     "mean", VALUE(h->count ? h->sum_ms / (double)h->count : 0.0),
                     "p50", VALUE(histogram_percentile(h, 50)),
                     "p90", VALUE(histogram_percentile(h, 90)),
                     "p99", VALUE(histogram_percentile(h, 99)), "buckets", buckets);
#undef VALUE
}
