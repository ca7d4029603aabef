/* Compiled core of the ingest worker's common case: a local file that is an upright RGB JPEG,
 * kept byte for byte.
 *
 * scan_plain_jpegs() reads each file, hashes it (SHA-256), validates it with libjpeg-turbo's
 * strict decode at 1/8 scale and encodes its WebDataset sample (<key>.jpg + <key>.json tar
 * members), with the GIL released. It decides only that happy path: every other file (not a JPEG,
 * CMYK or grey, EXIF present, over max_side or max_pixels, damaged, unreadable) is left to the
 * Python path (pipeline/images.py), which keeps every verdict. The bytes it writes equal those of
 * pipeline/ingest_worker.py's Python path, and damaged files get the same verdicts
 * (tests/pipeline/test_ingest_worker.py checks both). It parses no entropy-coded data itself:
 * libjpeg's strict decode does (a hand-written Huffman check once here saved 3 % of an ingest).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <jpeglib.h>
#include <openssl/evp.h>

#define KEY_HEX_CHARS 32
#define FIRST_READ (1 << 16)
#define EXIF_SCAN (1 << 16)
#define BLOCK 512

/* ---- growable byte buffer ------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
} Buffer;

static int buffer_reserve(Buffer *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + extra) cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buffer_append(Buffer *b, const void *src, size_t n) {
    if (buffer_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

/* Buffers kept between calls: a fresh multi-megabyte buffer per batch costs a page fault per
 * 4 KiB. Taken and given back with the GIL held, so concurrent calls (threads) never share one;
 * a call that finds them taken allocates its own. */
#define KEEP_AT_MOST (64u << 20)
static Buffer kept_blob, kept_file;

static Buffer take_buffer(Buffer *kept) {
    Buffer b = *kept;
    kept->data = NULL;
    kept->len = kept->cap = 0;
    b.len = 0;
    return b;
}

static void give_back_buffer(Buffer *kept, Buffer *b) {
    if (kept->data == NULL && b->cap <= KEEP_AT_MOST) {
        *kept = *b;
    } else {
        free(b->data);
    }
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- strict libjpeg error handling (TurboJPEG's "stop on warning") --------------------------- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
} StrictErrors;

static void strict_error_exit(j_common_ptr cinfo) { longjmp(((StrictErrors *)cinfo->err)->jump, 1); }

static void strict_emit_message(j_common_ptr cinfo, int level) {
    if (level < 0) longjmp(((StrictErrors *)cinfo->err)->jump, 1); /* a warning: corrupt data */
}

static void silent_output_message(j_common_ptr cinfo) { (void)cinfo; }

/* ---- per-file work --------------------------------------------------------------------------- */

/* The folder of the previous file, held open: a file in the same folder is opened relative to
 * it, so the kernel resolves one path component instead of the whole path. */
typedef struct {
    int fd;
    size_t len;
    char path[4096];
} DirCache;

static int open_file(const char *path, DirCache *dirs) {
    const char *slash = strrchr(path, '/');
    size_t len = slash ? (size_t)(slash - path) : 0;
    if (slash == NULL || len == 0 || len >= sizeof dirs->path) return open(path, O_RDONLY | O_CLOEXEC);
    if (dirs->fd < 0 || dirs->len != len || memcmp(dirs->path, path, len)) {
        if (dirs->fd >= 0) close(dirs->fd);
        memcpy(dirs->path, path, len);
        dirs->path[len] = '\0';
        dirs->len = len;
        dirs->fd = open(dirs->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dirs->fd < 0) return open(path, O_RDONLY | O_CLOEXEC);
    }
    return openat(dirs->fd, slash + 1, O_RDONLY | O_CLOEXEC);
}

/* Whole file into buf (reused across files); -1 on any error (the Python path reports it). */
static ssize_t read_file(const char *path, Buffer *buf, DirCache *dirs) {
    int fd = open_file(path, dirs);
    if (fd < 0) return -1;
    buf->len = 0;
    if (buffer_reserve(buf, FIRST_READ) < 0) goto fail;
    for (;;) {
        ssize_t got = read(fd, buf->data + buf->len, buf->cap - buf->len);
        if (got < 0) {
            if (errno == EINTR) continue;
            goto fail;
        }
        buf->len += (size_t)got;
        if (got == 0 || (buf->len < FIRST_READ && buf->len == (size_t)got)) break; /* short first read: EOF */
        if (buf->len == buf->cap && buffer_reserve(buf, buf->cap) < 0) goto fail;
    }
    close(fd);
    return (ssize_t)buf->len;
fail:
    close(fd);
    return -1;
}

static int has_exif(const unsigned char *data, size_t n) {
    size_t limit = n < EXIF_SCAN ? n : EXIF_SCAN;
    return memmem(data, limit, "Exif\0\0", 6) != NULL;
}

/* 1 when data is an upright 3-channel JPEG within the limits that decodes strictly at 1/8 scale.
 *
 * A fresh decompressor per file, as TurboJPEG's tjDecompress gives: a reused one keeps earlier
 * files' quantisation and Huffman tables (libjpeg's "abbreviated datastream" support), so a file
 * whose own tables are damaged would decode with another file's. (Fresh is also faster here.) */
static int plain_jpeg(Buffer *rowbuf, const unsigned char *data, size_t n, long long max_pixels, long max_side,
                      int *width, int *height) {
    if (n < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF) return 0;
    struct jpeg_decompress_struct cinfo;
    StrictErrors errors;
    cinfo.mem = NULL; /* jpeg_destroy_decompress is safe even if creating failed */
    cinfo.err = jpeg_std_error(&errors.pub);
    errors.pub.error_exit = strict_error_exit;
    errors.pub.emit_message = strict_emit_message;
    errors.pub.output_message = silent_output_message;
    if (setjmp(errors.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)n);
    if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK) {
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    *width = (int)cinfo.image_width;
    *height = (int)cinfo.image_height;
    if (cinfo.num_components != 3 || (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_RGB) ||
        (long long)cinfo.image_width * cinfo.image_height > max_pixels ||
        (max_side > 0 && ((long)cinfo.image_width > max_side || (long)cinfo.image_height > max_side)) ||
        has_exif(data, n)) {
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    cinfo.scale_num = 1;
    cinfo.scale_denom = 8;
    cinfo.dct_method = JDCT_IFAST;
    cinfo.do_fancy_upsampling = FALSE;
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    size_t stride = (size_t)cinfo.output_width * (size_t)cinfo.output_components;
    rowbuf->len = 0;
    if (buffer_reserve(rowbuf, stride) < 0) { /* no memory for a row: leave the file to Python */
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    JSAMPROW row[1] = {(JSAMPROW)rowbuf->data};
    while (cinfo.output_scanline < cinfo.output_height) jpeg_read_scanlines(&cinfo, row, 1);
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return 1;
}

/* json.dumps(text) with ensure_ascii=True: the exact bytes Python's encoder writes. */
static int json_string(Buffer *out, PyObject *text) {
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *chars = PyUnicode_DATA(text);
    if (buffer_reserve(out, (size_t)n * 12 + 2) < 0) return -1;
    char *p = out->data + out->len;
    *p++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, chars, i);
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            *p++ = (char)c;
            continue;
        }
        *p++ = '\\';
        switch (c) {
        case '"': *p++ = '"'; continue;
        case '\\': *p++ = '\\'; continue;
        case '\n': *p++ = 'n'; continue;
        case '\r': *p++ = 'r'; continue;
        case '\t': *p++ = 't'; continue;
        case '\b': *p++ = 'b'; continue;
        case '\f': *p++ = 'f'; continue;
        }
        if (c >= 0x10000) { /* a surrogate pair */
            Py_UCS4 v = c - 0x10000, hi = 0xD800 | (v >> 10), lo = 0xDC00 | (v & 0x3FF);
            *p++ = 'u';
            for (int s = 12; s >= 0; s -= 4) *p++ = hex[(hi >> s) & 0xF];
            *p++ = '\\';
            c = lo;
        }
        *p++ = 'u';
        for (int s = 12; s >= 0; s -= 4) *p++ = hex[(c >> s) & 0xF];
    }
    *p++ = '"';
    out->len = (size_t)(p - out->data);
    return 0;
}

/* One ustar regular-file member: header, data, zero padding to 512 bytes (as pipeline.tario). */
/* v as `digits` octal digits, zero-padded (v < 8**digits). */
static void put_octal(char *out, int digits, unsigned long long v) {
    for (int i = digits - 1; i >= 0; i--, v >>= 3) out[i] = (char)('0' + (v & 7));
}

/* v >= 0 in decimal at out; returns the number of characters. */
static int put_decimal(char *out, long long v) {
    char digits[24];
    int n = 0;
    do digits[n++] = (char)('0' + v % 10); while ((v /= 10) > 0);
    for (int i = 0; i < n; i++) out[i] = digits[n - 1 - i];
    return n;
}

/* Appends a constant string literal. */
#define PUT(at, literal) (memcpy((at), (literal), sizeof(literal) - 1), (at) += sizeof(literal) - 1)

static int tar_member(Buffer *out, const char *name, size_t name_len, const char *data, size_t size,
                      const char *mtime_field) {
    size_t padded = (size + BLOCK - 1) / BLOCK * BLOCK;
    if (buffer_reserve(out, BLOCK + padded) < 0) return -1;
    unsigned char *h = (unsigned char *)out->data + out->len;
    memset(h, 0, BLOCK);
    memcpy(h, name, name_len);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    put_octal((char *)h + 124, 11, size); /* "%011o" and the NUL already there */
    memcpy(h + 136, mtime_field, 12);
    memset(h + 148, ' ', 8);
    h[156] = '0';
    memcpy(h + 257, "ustar\0" "00", 8);
    memcpy(h + 265, "root", 4);
    memcpy(h + 297, "root", 4);
    unsigned int sum = 0;
    for (int i = 0; i < BLOCK; i++) sum += h[i];
    put_octal((char *)h + 148, 6, sum); /* "%06o", NUL, space */
    h[154] = '\0';
    h[155] = ' ';
    memcpy(h + BLOCK, data, size);
    memset(h + BLOCK + size, 0, padded - size);
    out->len += BLOCK + padded;
    return 0;
}

/* ---- the Python entry point ------------------------------------------------------------------ */

typedef struct {
    int ok;
    int width, height;
    Py_ssize_t size;
    size_t start, end;
    char sha_hex[64];
} FileResult;

static void to_hex(const unsigned char *digest, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 0xF];
    }
}

static PyObject *scan_plain_jpegs(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"paths", "uris", "max_pixels", "max_side", "mtime", "run_id", "spool_fd", NULL};
    PyObject *paths, *uris, *run_id;
    long long max_pixels, mtime;
    long max_side;
    int spool_fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!LlLU|i", keywords, &PyList_Type, &paths, &PyList_Type,
                                     &uris, &max_pixels, &max_side, &mtime, &run_id, &spool_fd))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (PyList_GET_SIZE(uris) != n) {
        PyErr_Format(PyExc_ValueError, "paths and uris differ in length: %zd vs %zd", n, PyList_GET_SIZE(uris));
        return NULL;
    }

    PyObject *encoded = PyList_New(n); /* paths as file-system bytes, alive while the GIL is released */
    PyObject *uri_digests = PyBytes_FromStringAndSize(NULL, n * 16); /* SHA-256[:16] of each URI */
    FileResult *results = calloc((size_t)(n ? n : 1), sizeof(FileResult));
    size_t *uri_at = calloc((size_t)n + 1, sizeof(size_t));
    Buffer uri_json = {0}, run_json = {0}, meta = {0};
    Buffer blob = take_buffer(&kept_blob), file = take_buffer(&kept_file);
    PyObject *out = NULL;
    int failed = 0, io_error = 0;
    if (encoded == NULL || uri_digests == NULL || results == NULL || uri_at == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *path = PyList_GET_ITEM(paths, i), *uri = PyList_GET_ITEM(uris, i);
        if (!PyUnicode_Check(path) || !PyUnicode_Check(uri)) {
            PyErr_Format(PyExc_TypeError, "paths and uris must hold str, got %R and %R", path, uri);
            goto done;
        }
        PyObject *raw = PyUnicode_EncodeFSDefault(path);
        if (raw == NULL) goto done;
        PyList_SET_ITEM(encoded, i, raw);
        PyObject *uri_utf8 = PyUnicode_AsEncodedString(uri, "utf-8", "surrogatepass");
        if (uri_utf8 == NULL) goto done;
        unsigned char uri_sha[32];
        unsigned int uri_sha_len = 0;
        int hashed = EVP_Digest(PyBytes_AS_STRING(uri_utf8), (size_t)PyBytes_GET_SIZE(uri_utf8), uri_sha, &uri_sha_len,
                                EVP_sha256(), NULL);
        Py_DECREF(uri_utf8);
        if (!hashed) {
            PyErr_SetString(PyExc_RuntimeError, "SHA-256 of a URI failed");
            goto done;
        }
        memcpy(PyBytes_AS_STRING(uri_digests) + 16 * i, uri_sha, 16);
        uri_at[i] = uri_json.len;
        if (json_string(&uri_json, uri) < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    uri_at[n] = uri_json.len;
    if (json_string(&run_json, run_id) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    char mtime_field[12];
    put_octal(mtime_field, 11, (unsigned long long)mtime);
    mtime_field[11] = '\0';

    Py_BEGIN_ALLOW_THREADS
    Buffer rowbuf = {0};
    DirCache dirs;
    dirs.fd = -1;
    dirs.len = 0;
    EVP_MD_CTX *hash = EVP_MD_CTX_new();
    const EVP_MD *sha256 = EVP_sha256();
    if (hash == NULL) failed = 1;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        FileResult *r = &results[i];
        r->start = r->end = blob.len;
        ssize_t size = read_file(PyBytes_AS_STRING(PyList_GET_ITEM(encoded, i)), &file, &dirs);
        if (size <= 0) continue;
        const unsigned char *data = (const unsigned char *)file.data;
        if (!plain_jpeg(&rowbuf, data, (size_t)size, max_pixels, max_side, &r->width, &r->height)) continue;
        unsigned char digest[32];
        unsigned int digest_len = 0;
        if (!EVP_DigestInit_ex(hash, sha256, NULL) || !EVP_DigestUpdate(hash, data, (size_t)size) ||
            !EVP_DigestFinal_ex(hash, digest, &digest_len)) {
            failed = 1;
            break;
        }
        const char *sha_hex = r->sha_hex;
        char name[KEY_HEX_CHARS + 5];
        to_hex(digest, r->sha_hex);
        memcpy(name, sha_hex, KEY_HEX_CHARS);
        meta.len = 0;
        char numbers[192], *at = numbers;
        PUT(at, "\"format\":\"JPEG\",\"mode\":\"RGB\",\"width\":");
        at += put_decimal(at, r->width);
        PUT(at, ",\"height\":");
        at += put_decimal(at, r->height);
        PUT(at, ",\"original_width\":");
        at += put_decimal(at, r->width);
        PUT(at, ",\"original_height\":");
        at += put_decimal(at, r->height);
        PUT(at, ",\"bytes\":");
        at += put_decimal(at, size);
        PUT(at, ",\"reencoded\":false,\"run_id\":");
        int numbers_len = (int)(at - numbers);
        if (buffer_append(&meta, "{\"key\":\"", 8) < 0 || buffer_append(&meta, sha_hex, KEY_HEX_CHARS) < 0 ||
            buffer_append(&meta, "\",\"source_uri\":", 15) < 0 ||
            buffer_append(&meta, uri_json.data + uri_at[i], uri_at[i + 1] - uri_at[i]) < 0 ||
            buffer_append(&meta, ",\"sha256\":\"", 11) < 0 || buffer_append(&meta, sha_hex, 64) < 0 ||
            buffer_append(&meta, "\",", 2) < 0 || buffer_append(&meta, numbers, (size_t)numbers_len) < 0 ||
            buffer_append(&meta, run_json.data, run_json.len) < 0 || buffer_append(&meta, "}", 1) < 0) {
            failed = 1;
            break;
        }
        memcpy(name + KEY_HEX_CHARS, ".jpg", 4);
        if (tar_member(&blob, name, KEY_HEX_CHARS + 4, file.data, (size_t)size, mtime_field) < 0) {
            failed = 1;
            break;
        }
        memcpy(name + KEY_HEX_CHARS, ".json", 5);
        if (tar_member(&blob, name, KEY_HEX_CHARS + 5, meta.data, meta.len, mtime_field) < 0) {
            failed = 1;
            break;
        }
        r->ok = 1;
        r->size = size;
        r->end = blob.len;
    }
    EVP_MD_CTX_free(hash);
    if (dirs.fd >= 0) close(dirs.fd);
    free(rowbuf.data);
    if (!failed && spool_fd >= 0) {
        size_t written = 0;
        while (written < blob.len) {
            ssize_t w = write(spool_fd, blob.data + written, blob.len - written);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                io_error = errno ? errno : EIO;
                break;
            }
            written += (size_t)w;
        }
    }
    Py_END_ALLOW_THREADS

    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    if (io_error) {
        errno = io_error;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    /* packed columns: 64 hex digits of sha256 per file (zeros: not decided here), and five
     * int64 per file: width, height, bytes (-1: not decided here), sample start, sample end */
    PyObject *body = spool_fd >= 0 ? PyLong_FromSize_t(blob.len) : PyBytes_FromStringAndSize(blob.data, blob.len);
    PyObject *hexes = PyBytes_FromStringAndSize(NULL, n * 64);
    PyObject *numbers = PyBytes_FromStringAndSize(NULL, n * 5 * (Py_ssize_t)sizeof(int64_t));
    if (body && hexes && numbers) {
        char *hex_out = PyBytes_AS_STRING(hexes);
        int64_t *num_out = (int64_t *)PyBytes_AS_STRING(numbers);
        for (Py_ssize_t i = 0; i < n; i++) {
            FileResult *r = &results[i];
            int64_t *row = num_out + 5 * i;
            if (r->ok) {
                memcpy(hex_out + 64 * i, r->sha_hex, 64);
                row[0] = r->width;
                row[1] = r->height;
                row[2] = r->size;
            } else {
                memset(hex_out + 64 * i, 0, 64);
                row[0] = row[1] = row[2] = -1;
            }
            row[3] = (int64_t)r->start;
            row[4] = (int64_t)r->end;
        }
        out = PyTuple_Pack(4, body, hexes, numbers, uri_digests);
    }
    Py_XDECREF(body);
    Py_XDECREF(hexes);
    Py_XDECREF(numbers);
done:
    Py_XDECREF(encoded);
    Py_XDECREF(uri_digests);
    free(results);
    free(uri_at);
    free(uri_json.data);
    free(run_json.data);
    give_back_buffer(&kept_blob, &blob);
    give_back_buffer(&kept_file, &file);
    free(meta.data);
    return out;
}

/* prctl(PR_SET_PDEATHSIG, sig): the kernel sends sig to this process when its parent dies. */
static PyObject *set_parent_death_signal(PyObject *self, PyObject *arg) {
    (void)self;
    long sig = PyLong_AsLong(arg);
    if (sig == -1 && PyErr_Occurred()) return NULL;
#ifdef __linux__
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"set_parent_death_signal", set_parent_death_signal, METH_O,
     "set_parent_death_signal(sig)\n--\n\n"
     "Have the kernel send ``sig`` to this process when its parent dies (Linux); False elsewhere."},
    {"scan_plain_jpegs", (PyCFunction)(void (*)(void))scan_plain_jpegs, METH_VARARGS | METH_KEYWORDS,
     "scan_plain_jpegs(paths, uris, max_pixels, max_side, mtime, run_id, spool_fd=-1)\n--\n\n"
     "Read, hash, strictly validate and tar-encode the upright RGB JPEGs among local files.\n\n"
     "Returns (blob, hexes, numbers, uri_digests): ``blob`` is the samples' tar members (bytes), or their length\n"
     "when written to ``spool_fd``; ``hexes`` holds 64 hex digits of each file's sha256 (64 zero bytes\n"
     "for a file it did not decide: the Python path handles it); ``numbers`` holds five native int64\n"
     "per file: width, height, bytes (-1 when not decided), and the start and end of its sample in\n"
     "blob (an empty range when not decided); ``uri_digests`` holds the first 16 bytes of the SHA-256\n"
     "of each URI's UTF-8 (what the ingest index stores). ``max_side`` <= 0 means no limit."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan",
                                    "Compiled core of the ingest worker (see scan_plain_jpegs).", -1, methods};

PyMODINIT_FUNC PyInit__fastscan(void) { return PyModule_Create(&module); }
