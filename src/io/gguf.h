/* gguf.h: read and write GGUF version 3, llama.cpp's model file.
 *
 * Layout (all little-endian; a string is a u64 byte count then the bytes, no NUL):
 *     "GGUF"  u32 version (3)  u64 tensor count  u64 metadata count
 *     metadata: key string, u32 value type, value; an array value is u32 element type, u64 count,
 *               the elements (strings included; arrays of arrays are not read or written)
 *     tensor infos: name string, u32 n_dims (1..4), u64 ne[n_dims] (ggml's order: ne[0] is the
 *               contiguous dimension, the last of the row-major shape), u32 ggml type, u64 offset
 *               (from the data section's start, a multiple of the alignment)
 *     padding to the alignment (`general.alignment`, u32, a power of two; 32 when absent), then the
 *     data section: each tensor at its offset, padded to the alignment.
 * Tensor types read and written: F32, F16, BF16 and Q8_0 (blocks of 32 along ne[0]: an fp16 scale
 * and 32 int8, see backend/q8.h). Files with the other common ggml types (Q4_0 .. Q6_K, integers,
 * F64) open and are validated, their infos listed; only their data cannot be read as float.
 *
 * Shapes in this API are row-major, as in the rest of moelm: shape[0..ndim) is ne reversed, so a
 * PyTorch nn.Linear weight [out, in] is ne = [in, out] in the file.
 *
 * Reading (gguf_open) validates the whole header before anything is used: magic and version;
 * counts against what the file can hold; every string's length against the file (keys at most
 * 65535 bytes and not empty, tensor names 1..63 bytes as ggml allows, no NUL in either); known value
 * and tensor types; bools 0 or 1; no arrays of arrays; no duplicate keys or tensor names;
 * general.alignment a u32 power of two; 1..4 dims, each > 0, their product and the byte size
 * without overflow; Q8_0's ne[0] a multiple of 32; offsets aligned, every tensor inside the file,
 * no two overlapping. Errors are one line naming the file, the section and the problem. Memory is a
 * small constant times the file's metadata; tensor data are read on demand with pread.
 *
 * Writing (GgufWriter) collects metadata and tensors (the float data by pointer: they must stay
 * valid until gguf_writer_write), then streams the file atomically (fileio.h: temporary, fsync,
 * rename), converting each tensor in chunks (F16/BF16 rounded to nearest even, Q8_0 quantized by
 * ggml's rule). Keys in the order added; tensors in the order added, each at the next aligned offset.
 */
#ifndef MOELM_GGUF_H
#define MOELM_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"

#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 63        /* tensor name bytes (ggml's GGML_MAX_NAME 64 holds the NUL) */
#define GGUF_MAX_KEY 65535

/* metadata value types, the numbers of the file */
typedef enum {
    GGUF_TYPE_U8 = 0, GGUF_TYPE_I8 = 1, GGUF_TYPE_U16 = 2, GGUF_TYPE_I16 = 3, GGUF_TYPE_U32 = 4,
    GGUF_TYPE_I32 = 5, GGUF_TYPE_F32 = 6, GGUF_TYPE_BOOL = 7, GGUF_TYPE_STRING = 8, GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_U64 = 10, GGUF_TYPE_I64 = 11, GGUF_TYPE_F64 = 12,
} GgufType;

/* tensor types (ggml_type numbers) */
typedef enum {
    GGUF_TENSOR_F32 = 0, GGUF_TENSOR_F16 = 1, GGUF_TENSOR_Q4_0 = 2, GGUF_TENSOR_Q4_1 = 3,
    GGUF_TENSOR_Q5_0 = 6, GGUF_TENSOR_Q5_1 = 7, GGUF_TENSOR_Q8_0 = 8, GGUF_TENSOR_Q2_K = 10,
    GGUF_TENSOR_Q3_K = 11, GGUF_TENSOR_Q4_K = 12, GGUF_TENSOR_Q5_K = 13, GGUF_TENSOR_Q6_K = 14,
    GGUF_TENSOR_Q8_K = 15, GGUF_TENSOR_I8 = 24, GGUF_TENSOR_I16 = 25, GGUF_TENSOR_I32 = 26,
    GGUF_TENSOR_I64 = 27, GGUF_TENSOR_F64 = 28, GGUF_TENSOR_BF16 = 30,
} GgufTensorType;

const char *gguf_type_name(GgufType t);               /* "u32", "string", ...; "?" if unknown */
const char *gguf_tensor_type_name(GgufTensorType t);  /* "F32", "Q8_0", ...; NULL if unknown */
/* bytes of n elements of a row (n a multiple of the type's block; 0 if unknown or not a multiple) */
uint64_t gguf_row_bytes(GgufTensorType t, uint64_t n);

/* ---- reading ---------------------------------------------------------------------------------- */

typedef struct Gguf Gguf;

typedef struct {
    const char *name;
    GgufTensorType type;
    int ndim;                        /* 1..4 */
    int64_t shape[GGUF_MAX_DIMS];    /* row-major: shape[ndim - 1] is ne[0] */
    uint64_t offset;                 /* bytes from the data section's start */
    uint64_t nbytes;
} GgufTensorInfo;

moelm_status gguf_open(Gguf **out, const char *path);
/* 1 when path is a regular file that starts with GGUF's magic (a model path to open as GGUF) */
int gguf_is_file(const char *path);
void gguf_close(Gguf *g);
uint32_t gguf_alignment(const Gguf *g);
uint64_t gguf_data_offset(const Gguf *g);      /* the data section's start in the file */

int gguf_kv_count(const Gguf *g);
const char *gguf_kv_key(const Gguf *g, int i);        /* i-th key in file order; NULL if out of range */
GgufType gguf_kv_type(const Gguf *g, int i);
int gguf_find_kv(const Gguf *g, const char *key);     /* its index, or -1 */

/* The value of key, which must have exactly type t (not an array or a string): *out is the C type of
 * t (uint8_t, int8_t, ..., float for F32, double for F64, uint8_t 0/1 for BOOL). MOELM_ERR_FORMAT
 * when absent or of another type; the message names the file, the key and both types. */
moelm_status gguf_get(const Gguf *g, const char *key, GgufType t, void *out);
/* Any integer type (u8 .. i64; a u64 above INT64_MAX is an error) as int64_t. */
moelm_status gguf_get_int(const Gguf *g, const char *key, int64_t *out);
/* F32 or F64 as double. */
moelm_status gguf_get_float(const Gguf *g, const char *key, double *out);
/* A string (NUL-terminated; *len, if not NULL, its byte count: the string may hold NULs). */
moelm_status gguf_get_string(const Gguf *g, const char *key, const char **s, uint64_t *len);
/* An array: its element type, count and, for numeric and bool elements, the packed elements in file
 * order (*data; NULL for string arrays, whose elements gguf_get_array_str gives). */
moelm_status gguf_get_array(const Gguf *g, const char *key, GgufType *elem, uint64_t *n, const void **data);
/* Element i (< count, CHECKed) of a string array (MOELM_ERR_FORMAT if key is not one). */
moelm_status gguf_get_array_str(const Gguf *g, const char *key, uint64_t i, const char **s, uint64_t *len);

int gguf_tensor_count(const Gguf *g);
const GgufTensorInfo *gguf_tensor_at(const Gguf *g, int i);            /* file order; NULL if out of range */
const GgufTensorInfo *gguf_find_tensor(const Gguf *g, const char *name);  /* NULL if absent */
/* Reads the tensor into dst as float after checking that its row-major shape is shape[0..ndim)
 * (F32; F16 and BF16 widened exactly; Q8_0 dequantized: d * q); the _part form reads elements
 * [first, first + count) only (for Q8_0 both multiples of 32; CHECKed, as the part must lie inside
 * the shape). Other types: MOELM_ERR_FORMAT naming the type. */
moelm_status gguf_read_tensor_f32(const Gguf *g, const char *name, float *dst, int ndim, const int64_t *shape);
moelm_status gguf_read_tensor_f32_part(const Gguf *g, const char *name, float *dst, int ndim, const int64_t *shape,
                                       size_t first, size_t count);
/* The stored bytes [first_byte, first_byte + n) of the tensor (inside nbytes: CHECKed), e.g. a Q8_0
 * tensor's BlockQ8_0 rows (backend/q8.h) for q8_0_gemv: row r of a [M, K] tensor is bytes
 * [r * K / 32 * 34, (r + 1) * K / 32 * 34). */
moelm_status gguf_read_tensor_raw(const Gguf *g, const GgufTensorInfo *t, void *dst, uint64_t first_byte, uint64_t n);

/* ---- writing ---------------------------------------------------------------------------------- */

typedef struct GgufWriter GgufWriter;

GgufWriter *gguf_writer_new(void);          /* NULL when out of memory */
void gguf_writer_free(GgufWriter *w);

/* Metadata, kept in the order added. A key must be new, non-empty, at most GGUF_MAX_KEY bytes
 * (CHECKed: a programming error). "general.alignment" (u32, a power of two) also sets the alignment
 * the writer uses. An allocation failure is remembered and returned by gguf_writer_write. */
void gguf_writer_add(GgufWriter *w, const char *key, GgufType t, const void *value);   /* a scalar of type t */
void gguf_writer_add_u32(GgufWriter *w, const char *key, uint32_t v);
void gguf_writer_add_i32(GgufWriter *w, const char *key, int32_t v);
void gguf_writer_add_u64(GgufWriter *w, const char *key, uint64_t v);
void gguf_writer_add_f32(GgufWriter *w, const char *key, float v);
void gguf_writer_add_bool(GgufWriter *w, const char *key, int v);
void gguf_writer_add_string(GgufWriter *w, const char *key, const char *s);
/* An array of n scalars of type elem (not STRING or ARRAY), packed as the C types of gguf_get. */
void gguf_writer_add_array(GgufWriter *w, const char *key, GgufType elem, const void *values, uint64_t n);
void gguf_writer_add_array_str(GgufWriter *w, const char *key, const char *const *strs, uint64_t n);

/* A tensor of row-major shape[0..ndim) (1..4 dims, each > 0), stored as type (F32, F16, BF16 or Q8_0;
 * Q8_0 needs shape[ndim - 1] % 32 == 0), from data (kept by pointer). The name is copied: 1..63
 * bytes, unique. All CHECKed. */
void gguf_writer_add_tensor(GgufWriter *w, const char *name, GgufTensorType type, int ndim, const int64_t *shape,
                            const float *data);

/* Writes the file. MOELM_ERR_ARG when a Q8_0 tensor holds a value it cannot store (NaN, Inf, or a
 * block whose scale overflows fp16: |x| >= ~8.3e6), naming the tensor; I/O errors as fileio.h. The
 * previous file at path survives any failure. */
moelm_status gguf_writer_write(GgufWriter *w, const char *path);

#endif
