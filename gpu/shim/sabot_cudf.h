/*
 * sabot_cudf: a small C ABI over libcudf for Sabot's GPU path.
 *
 * Data crosses in both directions through the Arrow C Data Interface: a batch is a struct
 * array (`ArrowSchema` + `ArrowArray`) whose children are the columns. The library never
 * releases what the caller passes in; what it returns (`out_schema`, `out_array`) belongs to
 * the caller, who releases it (Rust's arrow `ffi` does, on import).
 *
 * Every function that can fail returns 0 on success and a nonzero `sabot_cudf_status` on
 * failure, with `*err` set to a message allocated by the library (free it with
 * `sabot_cudf_free_error`). No C++ exception ever crosses this boundary.
 *
 * The header is plain C: the Rust bindings are generated from it by bindgen without
 * libcudf's headers.
 */
#ifndef SABOT_CUDF_H
#define SABOT_CUDF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this interface; the loader refuses a library built for another. */
#define SABOT_CUDF_ABI_VERSION 2

/* The Arrow C Data Interface, as the Arrow specification defines it. */
#ifndef ARROW_C_DATA_INTERFACE
#define ARROW_C_DATA_INTERFACE

#define ARROW_FLAG_DICTIONARY_ORDERED 1
#define ARROW_FLAG_NULLABLE 2
#define ARROW_FLAG_MAP_KEYS_SORTED 4

struct ArrowSchema {
  const char* format;
  const char* name;
  const char* metadata;
  int64_t flags;
  int64_t n_children;
  struct ArrowSchema** children;
  struct ArrowSchema* dictionary;
  void (*release)(struct ArrowSchema*);
  void* private_data;
};

struct ArrowArray {
  int64_t length;
  int64_t null_count;
  int64_t offset;
  int64_t n_buffers;
  int64_t n_children;
  const void** buffers;
  struct ArrowArray** children;
  struct ArrowArray* dictionary;
  void (*release)(struct ArrowArray*);
  void* private_data;
};

#endif /* ARROW_C_DATA_INTERFACE */

/* The Arrow C Device Data Interface (libcudf's host copies come back in one). */
#ifndef ARROW_C_DEVICE_DATA_INTERFACE
#define ARROW_C_DEVICE_DATA_INTERFACE

typedef int32_t ArrowDeviceType;

#define ARROW_DEVICE_CPU 1
#define ARROW_DEVICE_CUDA 2
#define ARROW_DEVICE_CUDA_HOST 3

struct ArrowDeviceArray {
  struct ArrowArray array;
  int64_t device_id;
  ArrowDeviceType device_type;
  void* sync_event;
  int64_t reserved[3];
};

#endif /* ARROW_C_DEVICE_DATA_INTERFACE */

enum sabot_cudf_status {
  SABOT_CUDF_OK = 0,
  /* The arguments are wrong (a column index out of range, an unknown operator). */
  SABOT_CUDF_INVALID = 1,
  /* libcudf does not support this type or operation; the caller runs it on the CPU. */
  SABOT_CUDF_UNSUPPORTED = 2,
  /* No usable CUDA device, or the CUDA runtime failed. */
  SABOT_CUDF_DEVICE = 3,
  /* Device (or pinned host) memory ran out. */
  SABOT_CUDF_OUT_OF_MEMORY = 4,
  /* Anything else libcudf threw. */
  SABOT_CUDF_INTERNAL = 5
};

void sabot_cudf_free_error(char* err);

int32_t sabot_cudf_abi_version(void);

struct sabot_cudf_device {
  int32_t device_count;
  int32_t compute_major;
  int32_t compute_minor;
  int64_t total_memory;
  int64_t free_memory;
  int32_t runtime_version;
  int32_t driver_version;
  char name[256];
};

/* Probes device 0. Fails (SABOT_CUDF_DEVICE) where there is no CUDA device or driver. */
int sabot_cudf_device_info(struct sabot_cudf_device* out, char** err);

/*
 * Sets up the device memory pool (a pool over CUDA async allocations) and the pinned host
 * staging buffer used for host-to-device copies, `pinned_bytes` large (0: none, pageable
 * copies). Idempotent; optional (the first call of any other function does it with
 * defaults).
 */
int sabot_cudf_init(int64_t pinned_bytes, char** err);

/* Aggregation kinds (results: SUM keeps libcudf's widening, COUNT_* are INT32 as cudf). */
enum sabot_cudf_agg_kind {
  SABOT_CUDF_AGG_SUM = 0,
  SABOT_CUDF_AGG_COUNT_VALID = 1,
  SABOT_CUDF_AGG_COUNT_ALL = 2,
  SABOT_CUDF_AGG_MIN = 3,
  SABOT_CUDF_AGG_MAX = 4,
  SABOT_CUDF_AGG_MEAN = 5
};

struct sabot_cudf_agg {
  int32_t column; /* input column the aggregation reads */
  int32_t kind;   /* enum sabot_cudf_agg_kind */
};

/*
 * Hash group-by of one batch. Output: a struct array with the key columns (one row per
 * distinct key, in no particular order), then one column per aggregation. Rows whose key
 * has a NULL form their own group (NULL keys are equal, as in SQL's GROUP BY).
 */
int sabot_cudf_groupby(const struct ArrowSchema* schema, const struct ArrowArray* batch,
                       const int32_t* key_columns, size_t n_keys,
                       const struct sabot_cudf_agg* aggs, size_t n_aggs,
                       struct ArrowSchema* out_schema, struct ArrowArray* out_array,
                       char** err);

/*
 * libcudf's stateful streaming group-by: partial aggregates stay on the device across
 * batches; `finalize` returns the result so far (and keeps the state).
 * `max_distinct_keys` bounds the distinct keys over the object's life and the rows of one
 * batch.
 */
typedef struct sabot_cudf_streaming_groupby sabot_cudf_streaming_groupby;

int sabot_cudf_streaming_groupby_new(const int32_t* key_columns, size_t n_keys,
                                     const struct sabot_cudf_agg* aggs, size_t n_aggs,
                                     int32_t max_distinct_keys,
                                     sabot_cudf_streaming_groupby** out, char** err);
int sabot_cudf_streaming_groupby_aggregate(sabot_cudf_streaming_groupby* groupby,
                                           const struct ArrowSchema* schema,
                                           const struct ArrowArray* batch, char** err);
int sabot_cudf_streaming_groupby_finalize(sabot_cudf_streaming_groupby* groupby,
                                          struct ArrowSchema* out_schema,
                                          struct ArrowArray* out_array, char** err);
int64_t sabot_cudf_streaming_groupby_distinct_keys(const sabot_cudf_streaming_groupby* groupby);
void sabot_cudf_streaming_groupby_free(sabot_cudf_streaming_groupby* groupby);

/*
 * Expression trees for filters and projections, as a flat array of nodes: a node's
 * operands are earlier nodes (`left`, `right` index into the array; -1 when absent).
 * Operands of a binary operator have the same type (the caller casts first), as
 * libcudf's AST requires.
 */
enum sabot_cudf_node_tag {
  SABOT_CUDF_NODE_COLUMN = 0,  /* `column`: an input column */
  SABOT_CUDF_NODE_INT32 = 1,   /* literal `ival` as INT32 */
  SABOT_CUDF_NODE_INT64 = 2,   /* literal `ival` */
  SABOT_CUDF_NODE_FLOAT32 = 3, /* literal `fval` as FLOAT32 */
  SABOT_CUDF_NODE_FLOAT64 = 4, /* literal `fval` */
  SABOT_CUDF_NODE_BOOL = 5,    /* literal `ival != 0` */
  SABOT_CUDF_NODE_OP = 6       /* `op` over `left` (and `right` when binary) */
};

enum sabot_cudf_op {
  SABOT_CUDF_OP_ADD = 0,
  SABOT_CUDF_OP_SUB = 1,
  SABOT_CUDF_OP_MUL = 2,
  SABOT_CUDF_OP_DIV = 3, /* integer division truncates, as SQL's */
  SABOT_CUDF_OP_MOD = 4,
  SABOT_CUDF_OP_EQ = 5,
  SABOT_CUDF_OP_NE = 6,
  SABOT_CUDF_OP_LT = 7,
  SABOT_CUDF_OP_LE = 8,
  SABOT_CUDF_OP_GT = 9,
  SABOT_CUDF_OP_GE = 10,
  SABOT_CUDF_OP_AND = 11, /* SQL's three-valued AND */
  SABOT_CUDF_OP_OR = 12,  /* SQL's three-valued OR */
  SABOT_CUDF_OP_NOT = 13,
  SABOT_CUDF_OP_IS_NULL = 14,
  SABOT_CUDF_OP_CAST_INT64 = 15,
  SABOT_CUDF_OP_CAST_FLOAT64 = 16,
  SABOT_CUDF_OP_ABS = 17
  /* Unary minus is `0 - x`, with the zero typed as x. */
};

struct sabot_cudf_node {
  int32_t tag; /* enum sabot_cudf_node_tag */
  int32_t op;  /* enum sabot_cudf_op, for SABOT_CUDF_NODE_OP */
  int32_t column;
  int32_t left;
  int32_t right;
  int64_t ival;
  double fval;
};

/*
 * Evaluates `projections` (node indices) over the rows where `predicate` (a node index,
 * or -1 for none) is true, and returns them as a struct array with one column per
 * projection. A projection that is a bare column node is gathered, not computed.
 */
int sabot_cudf_filter_project(const struct ArrowSchema* schema, const struct ArrowArray* batch,
                              const struct sabot_cudf_node* nodes, size_t n_nodes,
                              int32_t predicate, const int32_t* projections,
                              size_t n_projections, struct ArrowSchema* out_schema,
                              struct ArrowArray* out_array, char** err);

/*
 * Hash group-by of one batch whose aggregated values are computed on the device first:
 * `aggs[i].column` is the index of a node in `nodes` (an expression over the batch's
 * columns, as for sabot_cudf_filter_project; a bare column node is read as it is), and
 * `aggs[i].kind` as for sabot_cudf_groupby. Output as sabot_cudf_groupby's: the key
 * columns, then one column per aggregation.
 */
int sabot_cudf_groupby_exprs(const struct ArrowSchema* schema, const struct ArrowArray* batch,
                             const int32_t* key_columns, size_t n_keys,
                             const struct sabot_cudf_node* nodes, size_t n_nodes,
                             const struct sabot_cudf_agg* aggs, size_t n_aggs,
                             struct ArrowSchema* out_schema, struct ArrowArray* out_array,
                             char** err);

/*
 * Inner hash join of two batches on equal keys (NULL keys never match, as in SQL).
 * Returns the matching row pairs as a struct array of two INT32 columns, the left and the
 * right row index, in no particular order; the caller gathers the rows it needs.
 */
int sabot_cudf_inner_join(const struct ArrowSchema* left_schema,
                          const struct ArrowArray* left, const int32_t* left_keys,
                          const struct ArrowSchema* right_schema,
                          const struct ArrowArray* right, const int32_t* right_keys,
                          size_t n_keys, struct ArrowSchema* out_schema,
                          struct ArrowArray* out_array, char** err);

#ifdef __cplusplus
}
#endif

#endif /* SABOT_CUDF_H */
