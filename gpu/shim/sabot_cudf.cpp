// sabot_cudf: the C ABI of sabot_cudf.h over libcudf. Every entry point catches every
// exception and turns it into a status and a message; nothing is thrown across the ABI.

#include "sabot_cudf.h"

// expressions.hpp uses std::variant without including it (nvcc's own includes hide that).
#include <variant>

#include <cudf/aggregation.hpp>
#include <cudf/ast/expressions.hpp>
#include <cudf/column/column.hpp>
#include <cudf/column/column_factories.hpp>
#include <cudf/groupby.hpp>
#include <cudf/interop.hpp>
#include <cudf/join/join.hpp>
#include <cudf/scalar/scalar.hpp>
#include <cudf/stream_compaction.hpp>
#include <cudf/table/table.hpp>
#include <cudf/table/table_view.hpp>
#include <cudf/transform.hpp>
#include <cudf/utilities/default_stream.hpp>
#include <cudf/utilities/error.hpp>
#include <cudf/utilities/memory_resource.hpp>

#include <rmm/error.hpp>
#include <rmm/mr/cuda_async_memory_resource.hpp>

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

// An error the shim itself raises, with its status.
struct shim_error : std::runtime_error {
  int status;
  shim_error(int s, std::string const& m) : std::runtime_error(m), status(s) {}
};

void set_error(char** err, std::string const& message) {
  if (err == nullptr) return;
  char* copy = static_cast<char*>(std::malloc(message.size() + 1));
  if (copy != nullptr) std::memcpy(copy, message.c_str(), message.size() + 1);
  *err = copy;
}

// Runs `f`, mapping what it throws to a status and a message.
template <typename F>
int guarded(char** err, F&& f) {
  if (err != nullptr) *err = nullptr;
  try {
    f();
    return SABOT_CUDF_OK;
  } catch (shim_error const& e) {
    set_error(err, e.what());
    return e.status;
  } catch (rmm::out_of_memory const& e) {
    set_error(err, std::string("GPU memory exhausted: ") + e.what());
    return SABOT_CUDF_OUT_OF_MEMORY;
  } catch (std::bad_alloc const& e) {
    set_error(err, std::string("memory exhausted: ") + e.what());
    return SABOT_CUDF_OUT_OF_MEMORY;
  } catch (cudf::cuda_error const& e) {
    set_error(err, std::string("CUDA error: ") + e.what());
    return SABOT_CUDF_DEVICE;
  } catch (rmm::cuda_error const& e) {
    set_error(err, std::string("CUDA error: ") + e.what());
    return SABOT_CUDF_DEVICE;
  } catch (cudf::data_type_error const& e) {
    set_error(err, std::string("unsupported type: ") + e.what());
    return SABOT_CUDF_UNSUPPORTED;
  } catch (std::invalid_argument const& e) {
    set_error(err, std::string("invalid argument: ") + e.what());
    return SABOT_CUDF_INVALID;
  } catch (std::exception const& e) {
    set_error(err, e.what());
    return SABOT_CUDF_INTERNAL;
  } catch (...) {
    set_error(err, "unknown C++ exception in libcudf");
    return SABOT_CUDF_INTERNAL;
  }
}

void check_cuda(cudaError_t e, char const* what) {
  if (e != cudaSuccess) {
    throw shim_error(SABOT_CUDF_DEVICE,
                     std::string(what) + ": " + cudaGetErrorName(e) + " (" +
                       cudaGetErrorString(e) + ")");
  }
}

// ---- device setup -------------------------------------------------------------------

// Pinned host memory the input batches are staged through: DMA from pinned memory runs
// at the link's speed, from pageable memory at a fraction of it.
struct pinned_staging {
  std::mutex lock;
  void* data      = nullptr;
  size_t capacity = 0;
  size_t limit    = 0;  // 0: no staging

  // Grows to `bytes` if the limit allows; false if it does not (copy from pageable).
  bool reserve(size_t bytes) {
    if (bytes <= capacity) return true;
    if (bytes > limit) return false;
    if (data != nullptr) cudaFreeHost(data);
    data     = nullptr;
    capacity = 0;
    if (cudaHostAlloc(&data, bytes, cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      data = nullptr;
      return false;
    }
    capacity = bytes;
    return true;
  }
};

pinned_staging& staging() {
  static pinned_staging s;
  return s;
}

std::once_flag init_once;
int init_status = SABOT_CUDF_OK;
std::string init_message;

constexpr int64_t default_pinned_bytes = int64_t{256} << 20;

void do_init(int64_t pinned_bytes) {
  char* message = nullptr;
  init_status   = guarded(&message, [&] {
    int count = 0;
    check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    if (count == 0) throw shim_error(SABOT_CUDF_DEVICE, "no CUDA device");
    check_cuda(cudaSetDevice(0), "cudaSetDevice");
    // Stream-ordered allocations from CUDA's own pool, instead of a cudaMalloc and a
    // device-wide synchronization per column.
    cudf::set_current_device_resource(rmm::mr::cuda_async_memory_resource{});
    staging().limit = pinned_bytes > 0 ? static_cast<size_t>(pinned_bytes) : 0;
  });
  if (init_status != SABOT_CUDF_OK)
    init_message = message != nullptr ? message : "device setup failed";
  std::free(message);
}

void ensure_init(int64_t pinned_bytes = default_pinned_bytes) {
  std::call_once(init_once, do_init, pinned_bytes);
  if (init_status != SABOT_CUDF_OK) throw shim_error(init_status, init_message);
}

// ---- Arrow in -----------------------------------------------------------------------

// Bytes of a buffer of an array of `format` (a primitive, boolean or UTF-8 type), or
// nothing when the shim does not know the layout (then the batch is not staged).
bool buffer_sizes(ArrowSchema const* s, ArrowArray const* a, std::vector<size_t>& sizes) {
  std::string f = s->format;
  size_t const end  = static_cast<size_t>(a->offset + a->length);
  size_t const bits = (end + 7) / 8;
  size_t width      = 0;
  if (f == "c" || f == "C") width = 1;
  else if (f == "s" || f == "S") width = 2;
  else if (f == "i" || f == "I" || f == "f" || f == "tdD") width = 4;
  else if (f == "l" || f == "L" || f == "g" || f.rfind("ts", 0) == 0 || f.rfind("tD", 0) == 0)
    width = 8;
  if (width > 0 && a->n_buffers == 2) {
    sizes = {bits, end * width};
    return true;
  }
  if (f == "b" && a->n_buffers == 2) {
    sizes = {bits, bits};
    return true;
  }
  if ((f == "u" || f == "z") && a->n_buffers == 3) {
    auto const* offsets = static_cast<int32_t const*>(a->buffers[1]);
    size_t data_end     = offsets == nullptr || end == 0 ? 0 : static_cast<size_t>(offsets[end]);
    sizes               = {bits, (end + 1) * 4, data_end};
    return true;
  }
  return false;
}

// A copy of a struct array's top level and children whose buffers point into pinned
// memory. Valid while the staging lock is held.
struct staged_batch {
  ArrowArray top{};
  std::vector<ArrowArray> children;
  std::vector<ArrowArray*> child_ptrs;
  std::vector<std::vector<void const*>> buffers;
};

// The staged copy owns nothing (the staging area and the caller's batch do); a live
// release callback keeps it a valid, unreleased array for libcudf.
void release_nothing(ArrowArray* a) { a->release = nullptr; }

// Copies the batch's buffers into the pinned staging area; false (nothing staged) when a
// column's layout is unknown here or the batch does not fit.
bool stage(ArrowSchema const* schema, ArrowArray const* batch, staged_batch& out) {
  auto& st = staging();
  if (st.limit == 0 || batch->n_children != schema->n_children) return false;
  std::vector<std::vector<size_t>> sizes(batch->n_children);
  size_t total = 0;
  for (int64_t c = 0; c < batch->n_children; c++) {
    if (batch->children[c]->n_children != 0 || batch->children[c]->dictionary != nullptr ||
        !buffer_sizes(schema->children[c], batch->children[c], sizes[c]))
      return false;
    for (size_t b : sizes[c]) total += (b + 63) / 64 * 64;
  }
  if (!st.reserve(total)) return false;
  auto* base = static_cast<char*>(st.data);
  size_t at  = 0;
  out.top         = *batch;
  out.top.release = release_nothing;
  out.children.resize(batch->n_children);
  out.buffers.resize(batch->n_children);
  for (int64_t c = 0; c < batch->n_children; c++) {
    ArrowArray const* src = batch->children[c];
    out.children[c]         = *src;
    out.children[c].release = release_nothing;
    out.buffers[c].resize(src->n_buffers);
    for (int64_t b = 0; b < src->n_buffers; b++) {
      if (src->buffers[b] == nullptr || sizes[c][b] == 0) {
        out.buffers[c][b] = src->buffers[b];
        continue;
      }
      std::memcpy(base + at, src->buffers[b], sizes[c][b]);
      out.buffers[c][b] = base + at;
      at += (sizes[c][b] + 63) / 64 * 64;
    }
    out.children[c].buffers = out.buffers[c].data();
  }
  for (auto& child : out.children) out.child_ptrs.push_back(&child);
  out.top.children = out.child_ptrs.data();
  return true;
}

// The batch on the device (copied through pinned memory when it can be).
std::unique_ptr<cudf::table> to_device(ArrowSchema const* schema, ArrowArray const* batch) {
  if (schema == nullptr || batch == nullptr)
    throw shim_error(SABOT_CUDF_INVALID, "no batch given");
  if (std::string(schema->format) != "+s")
    throw shim_error(SABOT_CUDF_INVALID, "a batch is a struct array");
  auto stream = cudf::get_default_stream();
  std::unique_lock<std::mutex> guard(staging().lock);
  staged_batch staged;
  if (stage(schema, batch, staged)) {
    auto table = cudf::from_arrow(schema, &staged.top, stream);
    // The staging area is reused by the next batch: the copies must have finished.
    stream.sync();
    return table;
  }
  guard.unlock();
  return cudf::from_arrow(schema, batch, stream);
}

// ---- Arrow out ----------------------------------------------------------------------

struct schema_holder {
  cudf::unique_schema_t schema;
};
struct array_holder {
  cudf::unique_device_array_t array;
};

void release_schema(ArrowSchema* s) {
  delete static_cast<schema_holder*>(s->private_data);
  s->release = nullptr;
}
void release_array(ArrowArray* a) {
  delete static_cast<array_holder*>(a->private_data);
  a->release = nullptr;
}

// Copies `table` to host memory and hands it out as a struct array. The returned structs'
// own release callbacks free what libcudf allocated (its children go with it).
void to_host(cudf::table_view const& table, ArrowSchema* out_schema, ArrowArray* out_array) {
  if (out_schema == nullptr || out_array == nullptr)
    throw shim_error(SABOT_CUDF_INVALID, "no output given");
  std::vector<cudf::column_metadata> names;
  for (cudf::size_type c = 0; c < table.num_columns(); c++)
    names.emplace_back("c" + std::to_string(c));
  auto schema = std::make_unique<schema_holder>(
    schema_holder{cudf::to_arrow_schema(table, std::span<cudf::column_metadata const>(names))});
  auto stream = cudf::get_default_stream();
  auto array  = std::make_unique<array_holder>(array_holder{cudf::to_arrow_host(table, stream)});
  // The host copies are complete before the caller reads them.
  stream.sync();
  *out_schema              = *schema->schema;
  out_schema->release      = release_schema;
  out_schema->private_data = schema.release();
  *out_array               = array->array->array;
  out_array->release       = release_array;
  out_array->private_data  = array.release();
}

// ---- group-by -----------------------------------------------------------------------

std::unique_ptr<cudf::groupby_aggregation> make_agg(int32_t kind) {
  switch (kind) {
    case SABOT_CUDF_AGG_SUM: return cudf::make_sum_aggregation<cudf::groupby_aggregation>();
    case SABOT_CUDF_AGG_COUNT_VALID:
      return cudf::make_count_aggregation<cudf::groupby_aggregation>(cudf::null_policy::EXCLUDE);
    case SABOT_CUDF_AGG_COUNT_ALL:
      return cudf::make_count_aggregation<cudf::groupby_aggregation>(cudf::null_policy::INCLUDE);
    case SABOT_CUDF_AGG_MIN: return cudf::make_min_aggregation<cudf::groupby_aggregation>();
    case SABOT_CUDF_AGG_MAX: return cudf::make_max_aggregation<cudf::groupby_aggregation>();
    case SABOT_CUDF_AGG_MEAN: return cudf::make_mean_aggregation<cudf::groupby_aggregation>();
    default: throw shim_error(SABOT_CUDF_INVALID, "unknown aggregation kind " + std::to_string(kind));
  }
}

void check_columns(int32_t const* cols, size_t n, cudf::size_type width, char const* what) {
  if (n > 0 && cols == nullptr) throw shim_error(SABOT_CUDF_INVALID, std::string("no ") + what);
  for (size_t i = 0; i < n; i++) {
    if (cols[i] < 0 || cols[i] >= width)
      throw shim_error(SABOT_CUDF_INVALID, std::string(what) + " column " +
                                             std::to_string(cols[i]) + " out of range");
  }
}

// Key columns then one column per aggregation.
void emit_groups(std::unique_ptr<cudf::table> keys,
                 std::vector<cudf::groupby::aggregation_result>& results,
                 ArrowSchema* out_schema, ArrowArray* out_array) {
  auto columns = keys->release();
  for (auto& r : results)
    for (auto& col : r.results) columns.push_back(std::move(col));
  cudf::table out(std::move(columns));
  to_host(out.view(), out_schema, out_array);
}

// Groups `view` by its `key_columns` (NULL keys form a group), runs `requests` and
// hands back the keys, then one column per request.
void group_by(cudf::table_view const& view, int32_t const* key_columns, size_t n_keys,
              std::vector<cudf::groupby::aggregation_request> const& requests,
              ArrowSchema* out_schema, ArrowArray* out_array) {
  std::vector<cudf::column_view> key_views;
  for (size_t k = 0; k < n_keys; k++) key_views.push_back(view.column(key_columns[k]));
  cudf::groupby::groupby gb(cudf::table_view(key_views), cudf::null_policy::INCLUDE);
  auto result = gb.aggregate(requests);
  emit_groups(std::move(result.first), result.second, out_schema, out_array);
}

}  // namespace

struct sabot_cudf_streaming_groupby {
  std::vector<int32_t> keys;
  // Kept as long as the group-by: it is built from spans over these.
  std::vector<cudf::groupby::streaming_aggregation_request> requests;
  std::unique_ptr<cudf::groupby::streaming_groupby> inner;
};

extern "C" {

void sabot_cudf_free_error(char* err) { std::free(err); }

int32_t sabot_cudf_abi_version(void) { return SABOT_CUDF_ABI_VERSION; }

int sabot_cudf_device_info(sabot_cudf_device* out, char** err) {
  return guarded(err, [&] {
    if (out == nullptr) throw shim_error(SABOT_CUDF_INVALID, "no output given");
    std::memset(out, 0, sizeof(*out));
    check_cuda(cudaRuntimeGetVersion(&out->runtime_version), "cudaRuntimeGetVersion");
    check_cuda(cudaDriverGetVersion(&out->driver_version), "cudaDriverGetVersion");
    int count = 0;
    check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    out->device_count = count;
    if (count == 0) throw shim_error(SABOT_CUDF_DEVICE, "no CUDA device");
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    out->compute_major = prop.major;
    out->compute_minor = prop.minor;
    std::snprintf(out->name, sizeof(out->name), "%s", prop.name);
    size_t free_bytes = 0, total_bytes = 0;
    check_cuda(cudaSetDevice(0), "cudaSetDevice");
    check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    out->free_memory  = static_cast<int64_t>(free_bytes);
    out->total_memory = static_cast<int64_t>(total_bytes);
  });
}

int sabot_cudf_init(int64_t pinned_bytes, char** err) {
  return guarded(err, [&] { ensure_init(pinned_bytes); });
}

int sabot_cudf_groupby(ArrowSchema const* schema, ArrowArray const* batch,
                       int32_t const* key_columns, size_t n_keys, sabot_cudf_agg const* aggs,
                       size_t n_aggs, ArrowSchema* out_schema, ArrowArray* out_array,
                       char** err) {
  return guarded(err, [&] {
    ensure_init();
    auto table = to_device(schema, batch);
    auto view  = table->view();
    check_columns(key_columns, n_keys, view.num_columns(), "key");
    if (n_aggs > 0 && aggs == nullptr) throw shim_error(SABOT_CUDF_INVALID, "no aggregations");
    // One request per aggregation, in order, so results line up with `aggs`.
    std::vector<cudf::groupby::aggregation_request> requests(n_aggs);
    for (size_t a = 0; a < n_aggs; a++) {
      check_columns(&aggs[a].column, 1, view.num_columns(), "aggregation");
      requests[a].values = view.column(aggs[a].column);
      requests[a].aggregations.push_back(make_agg(aggs[a].kind));
    }
    group_by(view, key_columns, n_keys, requests, out_schema, out_array);
  });
}

int sabot_cudf_streaming_groupby_new(int32_t const* key_columns, size_t n_keys,
                                     sabot_cudf_agg const* aggs, size_t n_aggs,
                                     int32_t max_distinct_keys,
                                     sabot_cudf_streaming_groupby** out, char** err) {
  return guarded(err, [&] {
    ensure_init();
    if (out == nullptr) throw shim_error(SABOT_CUDF_INVALID, "no output given");
    *out = nullptr;
    if (n_keys == 0 || key_columns == nullptr)
      throw shim_error(SABOT_CUDF_INVALID, "a streaming group-by needs key columns");
    if (n_aggs > 0 && aggs == nullptr) throw shim_error(SABOT_CUDF_INVALID, "no aggregations");
    auto h  = std::make_unique<sabot_cudf_streaming_groupby>();
    h->keys = std::vector<int32_t>(key_columns, key_columns + n_keys);
    for (size_t a = 0; a < n_aggs; a++) {
      if (aggs[a].column < 0) throw shim_error(SABOT_CUDF_INVALID, "aggregation column < 0");
      h->requests.push_back({aggs[a].column, make_agg(aggs[a].kind)});
    }
    h->inner = std::make_unique<cudf::groupby::streaming_groupby>(
      cudf::host_span<cudf::size_type const>(h->keys.data(), h->keys.size()),
      cudf::host_span<cudf::groupby::streaming_aggregation_request const>(h->requests.data(),
                                                                           h->requests.size()),
      max_distinct_keys,
      cudf::null_policy::INCLUDE);
    *out = h.release();
  });
}

int sabot_cudf_streaming_groupby_aggregate(sabot_cudf_streaming_groupby* groupby,
                                           ArrowSchema const* schema, ArrowArray const* batch,
                                           char** err) {
  return guarded(err, [&] {
    if (groupby == nullptr) throw shim_error(SABOT_CUDF_INVALID, "no streaming group-by");
    auto table = to_device(schema, batch);
    check_columns(groupby->keys.data(), groupby->keys.size(), table->num_columns(), "key");
    groupby->inner->aggregate(table->view());
  });
}

int sabot_cudf_streaming_groupby_finalize(sabot_cudf_streaming_groupby* groupby,
                                          ArrowSchema* out_schema, ArrowArray* out_array,
                                          char** err) {
  return guarded(err, [&] {
    if (groupby == nullptr) throw shim_error(SABOT_CUDF_INVALID, "no streaming group-by");
    auto result = groupby->inner->finalize();
    emit_groups(std::move(result.first), result.second, out_schema, out_array);
  });
}

int64_t sabot_cudf_streaming_groupby_distinct_keys(sabot_cudf_streaming_groupby const* groupby) {
  return groupby == nullptr ? 0 : groupby->inner->distinct_keys();
}

void sabot_cudf_streaming_groupby_free(sabot_cudf_streaming_groupby* groupby) {
  delete groupby;
}

}  // extern "C"

namespace {

// libcudf's AST over the caller's node array. The tree owns the expressions; literals
// refer to scalars owned here, so both live as long as this object.
struct expression_builder {
  cudf::ast::tree tree;
  std::vector<std::unique_ptr<cudf::scalar>> scalars;
  std::vector<cudf::ast::expression const*> built;

  cudf::ast::ast_operator map_op(int32_t op, bool& unary) {
    using cudf::ast::ast_operator;
    unary = false;
    switch (op) {
      case SABOT_CUDF_OP_ADD: return ast_operator::ADD;
      case SABOT_CUDF_OP_SUB: return ast_operator::SUB;
      case SABOT_CUDF_OP_MUL: return ast_operator::MUL;
      case SABOT_CUDF_OP_DIV: return ast_operator::DIV;
      case SABOT_CUDF_OP_MOD: return ast_operator::MOD;
      case SABOT_CUDF_OP_EQ: return ast_operator::EQUAL;
      case SABOT_CUDF_OP_NE: return ast_operator::NOT_EQUAL;
      case SABOT_CUDF_OP_LT: return ast_operator::LESS;
      case SABOT_CUDF_OP_LE: return ast_operator::LESS_EQUAL;
      case SABOT_CUDF_OP_GT: return ast_operator::GREATER;
      case SABOT_CUDF_OP_GE: return ast_operator::GREATER_EQUAL;
      case SABOT_CUDF_OP_AND: return ast_operator::NULL_LOGICAL_AND;
      case SABOT_CUDF_OP_OR: return ast_operator::NULL_LOGICAL_OR;
      default: break;
    }
    unary = true;
    switch (op) {
      case SABOT_CUDF_OP_NOT: return ast_operator::NOT;
      case SABOT_CUDF_OP_IS_NULL: return ast_operator::IS_NULL;
      case SABOT_CUDF_OP_CAST_INT64: return ast_operator::CAST_TO_INT64;
      case SABOT_CUDF_OP_CAST_FLOAT64: return ast_operator::CAST_TO_FLOAT64;
      case SABOT_CUDF_OP_ABS: return ast_operator::ABS;
      default: throw shim_error(SABOT_CUDF_INVALID, "unknown operator " + std::to_string(op));
    }
  }

  template <typename T>
  cudf::ast::expression const& literal(T value) {
    auto s   = std::make_unique<cudf::numeric_scalar<T>>(value, true);
    auto& lit = tree.emplace<cudf::ast::literal>(*s);
    scalars.push_back(std::move(s));
    return lit;
  }

  void build(sabot_cudf_node const* nodes, size_t n, cudf::size_type width) {
    if (n > 0 && nodes == nullptr) throw shim_error(SABOT_CUDF_INVALID, "no expression nodes");
    auto operand = [&](int32_t i, size_t at) -> cudf::ast::expression const& {
      if (i < 0 || static_cast<size_t>(i) >= at)
        throw shim_error(SABOT_CUDF_INVALID, "expression node " + std::to_string(at) +
                                               " has an operand that is not an earlier node");
      return *built[i];
    };
    for (size_t i = 0; i < n; i++) {
      auto const& node = nodes[i];
      cudf::ast::expression const* e = nullptr;
      switch (node.tag) {
        case SABOT_CUDF_NODE_COLUMN:
          if (node.column < 0 || node.column >= width)
            throw shim_error(SABOT_CUDF_INVALID, "expression column out of range");
          e = &tree.emplace<cudf::ast::column_reference>(node.column);
          break;
        case SABOT_CUDF_NODE_INT32: e = &literal<int32_t>(static_cast<int32_t>(node.ival)); break;
        case SABOT_CUDF_NODE_INT64: e = &literal<int64_t>(node.ival); break;
        case SABOT_CUDF_NODE_FLOAT32: e = &literal<float>(static_cast<float>(node.fval)); break;
        case SABOT_CUDF_NODE_FLOAT64: e = &literal<double>(node.fval); break;
        case SABOT_CUDF_NODE_BOOL: e = &literal<bool>(node.ival != 0); break;
        case SABOT_CUDF_NODE_OP: {
          bool unary = false;
          auto op    = map_op(node.op, unary);
          e          = unary ? &tree.emplace<cudf::ast::operation>(op, operand(node.left, i))
                             : &tree.emplace<cudf::ast::operation>(op, operand(node.left, i),
                                                                 operand(node.right, i));
          break;
        }
        default:
          throw shim_error(SABOT_CUDF_INVALID, "unknown expression node " + std::to_string(node.tag));
      }
      built.push_back(e);
    }
  }

  cudf::ast::expression const& at(int32_t i) const {
    if (i < 0 || static_cast<size_t>(i) >= built.size())
      throw shim_error(SABOT_CUDF_INVALID, "expression root out of range");
    return *built[i];
  }

  // Node `root` over `view`: a bare column is read as it is; anything else is computed
  // into a column kept in `computed` (which must outlive the view returned).
  cudf::column_view evaluate(cudf::table_view const& view, sabot_cudf_node const* nodes,
                             int32_t root,
                             std::vector<std::unique_ptr<cudf::column>>& computed) const {
    auto const& e = at(root);
    if (nodes[root].tag == SABOT_CUDF_NODE_COLUMN) return view.column(nodes[root].column);
    computed.push_back(cudf::compute_column(view, e));
    return computed.back()->view();
  }
};

}  // namespace

extern "C" {

int sabot_cudf_filter_project(ArrowSchema const* schema, ArrowArray const* batch,
                              sabot_cudf_node const* nodes, size_t n_nodes, int32_t predicate,
                              int32_t const* projections, size_t n_projections,
                              ArrowSchema* out_schema, ArrowArray* out_array, char** err) {
  return guarded(err, [&] {
    ensure_init();
    auto table = to_device(schema, batch);
    auto view  = table->view();
    expression_builder exprs;
    exprs.build(nodes, n_nodes, view.num_columns());
    if (n_projections > 0 && projections == nullptr)
      throw shim_error(SABOT_CUDF_INVALID, "no projections");
    std::vector<std::unique_ptr<cudf::column>> computed;
    std::vector<cudf::column_view> outputs;
    for (size_t p = 0; p < n_projections; p++)
      outputs.push_back(exprs.evaluate(view, nodes, projections[p], computed));
    cudf::table_view projected(outputs);
    if (predicate < 0) {
      to_host(projected, out_schema, out_array);
      return;
    }
    auto mask = cudf::compute_column(view, exprs.at(predicate));
    if (mask->type().id() != cudf::type_id::BOOL8)
      throw shim_error(SABOT_CUDF_INVALID, "the predicate is not boolean");
    // Rows where the predicate is false or NULL are dropped.
    auto kept = cudf::apply_retention_mask(projected, mask->view());
    to_host(kept->view(), out_schema, out_array);
  });
}

int sabot_cudf_groupby_exprs(ArrowSchema const* schema, ArrowArray const* batch,
                             int32_t const* key_columns, size_t n_keys,
                             sabot_cudf_node const* nodes, size_t n_nodes,
                             sabot_cudf_agg const* aggs, size_t n_aggs, ArrowSchema* out_schema,
                             ArrowArray* out_array, char** err) {
  return guarded(err, [&] {
    ensure_init();
    auto table = to_device(schema, batch);
    auto view  = table->view();
    check_columns(key_columns, n_keys, view.num_columns(), "key");
    if (n_aggs > 0 && aggs == nullptr) throw shim_error(SABOT_CUDF_INVALID, "no aggregations");
    expression_builder exprs;
    exprs.build(nodes, n_nodes, view.num_columns());
    // The computed values live until the group-by has read them.
    std::vector<std::unique_ptr<cudf::column>> computed;
    std::vector<cudf::groupby::aggregation_request> requests(n_aggs);
    for (size_t a = 0; a < n_aggs; a++) {
      requests[a].values = exprs.evaluate(view, nodes, aggs[a].column, computed);
      requests[a].aggregations.push_back(make_agg(aggs[a].kind));
    }
    group_by(view, key_columns, n_keys, requests, out_schema, out_array);
  });
}

int sabot_cudf_inner_join(ArrowSchema const* left_schema, ArrowArray const* left,
                          int32_t const* left_keys, ArrowSchema const* right_schema,
                          ArrowArray const* right, int32_t const* right_keys, size_t n_keys,
                          ArrowSchema* out_schema, ArrowArray* out_array, char** err) {
  return guarded(err, [&] {
    ensure_init();
    if (n_keys == 0) throw shim_error(SABOT_CUDF_INVALID, "a join needs key columns");
    auto l = to_device(left_schema, left);
    auto r = to_device(right_schema, right);
    check_columns(left_keys, n_keys, l->num_columns(), "left key");
    check_columns(right_keys, n_keys, r->num_columns(), "right key");
    std::vector<cudf::column_view> lk, rk;
    for (size_t k = 0; k < n_keys; k++) {
      lk.push_back(l->view().column(left_keys[k]));
      rk.push_back(r->view().column(right_keys[k]));
    }
    auto [li, ri] = cudf::inner_join(cudf::table_view(lk), cudf::table_view(rk),
                                     cudf::null_equality::UNEQUAL);
    std::vector<std::unique_ptr<cudf::column>> columns;
    columns.push_back(std::make_unique<cudf::column>(std::move(*li), rmm::device_buffer{}, 0));
    columns.push_back(std::make_unique<cudf::column>(std::move(*ri), rmm::device_buffer{}, 0));
    cudf::table pairs(std::move(columns));
    to_host(pairs.view(), out_schema, out_array);
  });
}

}  // extern "C"
