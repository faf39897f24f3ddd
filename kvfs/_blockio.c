/* kvfs._blockio: a block file's system calls and payload hash in one call, without the GIL.
 *
 * Why: the connector's I/O threads (16 on a GPU host) each store or load one block file per operation.  Done in
 * Python, a file is ~6 system calls and as many hash calls, each giving up and retaking the GIL, with Python steps
 * between them under it: at 2 MiB files 16 threads moved 0.26x the bytes of vLLM's stock tier (whose per-file
 * path is C) and kept ~4 cores busy.  Here a store (stat, open, hash, write, close, rename) and a load (open,
 * fstat, read, hash, close) each release the GIL once.
 *
 * What a block file is stays in kvfs/blockfile.py: this module knows no magic, field or version.  A store gets
 * the encoded header from Python, and the two offsets at which to put the payload checksum and the header's own
 * checksum once the payload is hashed; a load returns the first HEADER bytes, the payload bytes read after them
 * and their checksum, and Python validates.  Checksum algorithm 2 of kvfs/checksum.py (xxh3-64 over the
 * little-endian xxh3-64 digests of fixed pieces) is computed with xxhash's own XXH3_64bits, whose address the
 * caller binds (the `xxhash` package's extension exports it); kvfs/checksum.py checks the results against its
 * Python implementation before anything uses this module.
 *
 * Limited API (abi3): one build loads on every CPython >= 3.11.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

typedef uint64_t (*xxh3_fn)(const void *, size_t);
static xxh3_fn xxh3 = NULL;

/* Outcomes shared with kvfs/nativeio.py. */
enum {
    ST_STORED = 0,
    ST_EXISTS = 1,
    ST_OPEN_FAILED = 2,       /* the temp file could not be created, its directories included (errno) */
    ST_FAILED = 3,            /* errno; the temp file is removed */
    ST_NOREPLACE_REFUSED = 4, /* the filesystem refuses RENAME_NOREPLACE: the temp file is written, closed and
                                 left for the caller to publish */
};
enum {
    LD_OK = 0,
    LD_MISSING = 1,
    LD_IO_ERROR = 2,
    LD_NOT_REGULAR = 3,
};

static void put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Algorithm 2 over a payload that arrives in order: piece digests collected as the bytes come. */
#define LOCAL_DIGESTS 64 /* a payload of up to 64 pieces needs no allocation */
typedef struct {
    uint64_t *digests;
    size_t count;
    size_t piece;
    uint64_t local[LOCAL_DIGESTS];
} pieces_t;

static int pieces_init(pieces_t *p, size_t nbytes, size_t piece) {
    p->piece = piece;
    p->count = 0;
    size_t n = nbytes / piece + 1;
    p->digests = n <= LOCAL_DIGESTS ? p->local : malloc(n * sizeof(uint64_t));
    return p->digests != NULL;
}

static void pieces_free(pieces_t *p) {
    if (p->digests != p->local) free(p->digests);
    p->digests = NULL;
}

/* Hash whole pieces of buf[0:len) (len a multiple of the piece, or the payload's end). */
static void pieces_feed(pieces_t *p, const unsigned char *buf, size_t len) {
    for (size_t pos = 0; pos < len; pos += p->piece) {
        size_t take = len - pos < p->piece ? len - pos : p->piece;
        p->digests[p->count++] = xxh3(buf + pos, take);
    }
}

static uint64_t pieces_final(pieces_t *p) {
    unsigned char *packed = (unsigned char *)p->digests; /* packed in place, little-endian */
    for (size_t i = 0; i < p->count; i++) {
        uint64_t d = p->digests[i];
        put_le64(packed + 8 * i, d);
    }
    uint64_t sum = xxh3(packed, p->count * 8);
    pieces_free(p);
    return sum;
}

/* Drop the first n bytes of a vector after a short transfer. */
static void advance(struct iovec **iov, int *iovcnt, size_t n) {
    while (*iovcnt > 0 && n >= (*iov)->iov_len) {
        n -= (*iov)->iov_len;
        (*iov)++;
        (*iovcnt)--;
    }
    if (*iovcnt > 0) {
        (*iov)->iov_base = (char *)(*iov)->iov_base + n;
        (*iov)->iov_len -= n;
    }
}

static int write_all(int fd, struct iovec *iov, int iovcnt, off_t off) {
    while (iovcnt > 0) {
        ssize_t n = pwritev(fd, iov, iovcnt, off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        off += n;
        advance(&iov, &iovcnt, (size_t)n);
    }
    return 0;
}

/* Read up to the vectors' length; fewer bytes only at end of file.  Returns the bytes read, or -1. */
static ssize_t read_full(int fd, struct iovec *iov, int iovcnt, off_t off) {
    ssize_t total = 0;
    while (iovcnt > 0) {
        ssize_t n = preadv(fd, iov, iovcnt, off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) break;
        total += n;
        off += n;
        advance(&iov, &iovcnt, (size_t)n);
    }
    return total;
}

#define ALIGN 4096 /* O_DIRECT's buffer, offset and length alignment (kvfs.blockfile.ALIGNMENT) */
#define ALIGNED(p) (((uintptr_t)(p) % ALIGN) == 0)

/* Why an O_DIRECT operation went through the page cache instead (kvfs_o_direct_fallbacks_total's reasons). */
enum { FB_NONE = 0, FB_OPEN = 1, FB_UNALIGNED = 2, FB_WRITE_EINVAL = 3, FB_READ_EINVAL = 4 };

static void clear_direct(int fd, int *use_direct) {
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_DIRECT);
    *use_direct = 0;
}

/* Write buf[0:len) at off; a direct write the filesystem refuses (EINVAL) is done again through the page cache. */
static int write_at(int fd, const void *buf, size_t len, off_t off, int *use_direct, int *fallback) {
    struct iovec iov = {(void *)buf, len};
    if (write_all(fd, &iov, 1, off) == 0) return 0;
    if (errno != EINVAL || !*use_direct) return -1;
    clear_direct(fd, use_direct);
    *fallback = FB_WRITE_EINVAL;
    iov.iov_base = (void *)buf;
    iov.iov_len = len;
    return write_all(fd, &iov, 1, off);
}

/* Read `pre_len` bytes into `pre` (a header, or nothing) and the next `len` into buf, from `off`, in one call
 * where the kernel allows; fewer only at end of file.  `room` bytes at buf may be written.  Direct I/O reads
 * whole pages: `len` rounded up when `room` allows (the read stops at end of file), else its aligned part
 * direct and the rest through the page cache (O_DIRECT then cleared for the file).  Returns the bytes read
 * into pre and buf[0:len), or -1. */
static ssize_t read_span(int fd, unsigned char *pre, size_t pre_len, unsigned char *buf, size_t len, size_t room,
                         off_t off, int *use_direct, int *fallback) {
    for (;;) {
        size_t dlen = len;
        if (*use_direct) {
            size_t up = (len + ALIGN - 1) / ALIGN * ALIGN;
            dlen = up <= room ? up : len / ALIGN * ALIGN;
        }
        struct iovec iov[2];
        int cnt = 0;
        if (pre_len) iov[cnt++] = (struct iovec){pre, pre_len};
        if (dlen) iov[cnt++] = (struct iovec){buf, dlen};
        ssize_t n = cnt ? read_full(fd, iov, cnt, off) : 0;
        if (n < 0) {
            if (errno == EINVAL && *use_direct) {
                clear_direct(fd, use_direct);
                *fallback = FB_READ_EINVAL;
                continue;
            }
            return -1;
        }
        size_t head = (size_t)n < pre_len ? (size_t)n : pre_len;
        size_t body = (size_t)n - head;
        if (body > len) body = len; /* a rounded direct read brought bytes past `len` */
        if ((size_t)n == pre_len + dlen && dlen < len) {
            clear_direct(fd, use_direct);
            struct iovec tail = {buf + dlen, len - dlen};
            ssize_t m = read_full(fd, &tail, 1, off + (off_t)(pre_len + dlen));
            if (m < 0) return -1;
            body = dlen + (size_t)m;
        }
        return (ssize_t)(head + body);
    }
}

/* mkdir -p of `dir`, each directory it creates given `mode` exactly (a chmod where the umask strips a bit of
 * it: `chmod_dirs`), the leaf tried first (its parent usually exists).  As kvfs.layout.makedirs: EEXIST is
 * success (a file there fails the open that follows).  0, or -1 with errno. */
static int make_dirs(char *dir, mode_t mode, int chmod_dirs, int depth) {
    if (mkdir(dir, mode) == 0) return chmod_dirs ? chmod(dir, mode) : 0;
    if (errno == EEXIST) return 0;
    char *slash = strrchr(dir, '/');
    if (errno != ENOENT || depth <= 0 || slash == NULL || slash == dir) return -1;
    *slash = '\0';
    int made = make_dirs(dir, mode, chmod_dirs, depth - 1);
    *slash = '/';
    if (made < 0) return -1;
    if (mkdir(dir, mode) == 0) return chmod_dirs ? chmod(dir, mode) : 0;
    return errno == EEXIST ? 0 : -1;
}

/* Create the temp file, creating its directories when they are missing (`dir_mode` > 0): new, or removed by the
 * evictor when they emptied, possibly again between our mkdir and the open, so again and again (the bound of
 * kvfs.blockfile._DIR_RETRIES). */
#define DIR_RETRIES 256
static int open_creating_dirs(const char *tmp, int flags, mode_t mode, mode_t dir_mode, int chmod_dirs) {
    int fd = open(tmp, flags, mode);
    for (int tries = 0; fd < 0 && errno == ENOENT && dir_mode && tries < DIR_RETRIES; tries++) {
        char dir[PATH_MAX];
        size_t len = strlen(tmp);
        if (len >= sizeof dir) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(dir, tmp, len + 1);
        char *slash = strrchr(dir, '/');
        if (slash == NULL || slash == dir) {
            errno = ENOENT;
            return -1;
        }
        *slash = '\0';
        if (make_dirs(dir, dir_mode, chmod_dirs, 64) < 0 && errno != ENOENT) return -1;
        fd = open(tmp, flags, mode);
    }
    return fd;
}

/* The existence checks use access(2) and the type check the fstat system call itself, not glibc's stat64 /
 * fstat64 (versioned GLIBC_2.33): one build then loads on every glibc >= 2.28, as torch's wheels need (x86_64's
 * struct stat is the kernel's). */
static int fstat_raw(int fd, struct stat *st) { return (int)syscall(SYS_fstat, fd, st); }

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) return -1;
    if (!PyBuffer_IsContiguous(view, 'C')) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous buffer", what);
        return -1;
    }
    return 0;
}

/* store(tmp, final, header, sum_offset, header_sum_offset, payload, known, checksum, hash_piece, write_piece,
 *       mode, fchmod, dir_mode, chmod_dirs, datasync, noreplace, direct) -> (outcome, errno, direct_fallback)
 *
 * Missing directories of the temp file are created with `dir_mode` (0: not created; the open fails ENOENT).
 * header: writable, its length the header's (page-aligned for `direct`).  Without `known`: hash the payload
 * (algorithm 2, `hash_piece` pieces) as it is written in `write_piece` steps, then put the checksum at
 * `sum_offset` and the header's xxh3-64 of header[:header_sum_offset] at `header_sum_offset`, and write the header
 * last (the file is an unpublished temp file until its rename).  A known checksum, or a payload of one step, goes
 * out with its header in one pwritev.  `direct`: O_DIRECT for the whole pages of a page-aligned payload, the tail
 * through the page cache; refused or unaligned, through the page cache (the reason in direct_fallback). */
static PyObject *blockio_store(PyObject *self, PyObject *args) {
    (void)self;
    const char *tmp, *final;
    PyObject *header_obj, *payload_obj;
    Py_ssize_t sum_off, hsum_off, hash_piece, write_piece;
    unsigned long long known_sum;
    int known, mode, do_fchmod, dir_mode, chmod_dirs, datasync, noreplace, direct;
    if (!PyArg_ParseTuple(args, "yyOnnOpKnnipipppp", &tmp, &final, &header_obj, &sum_off, &hsum_off, &payload_obj,
                          &known, &known_sum, &hash_piece, &write_piece, &mode, &do_fchmod, &dir_mode,
                          &chmod_dirs, &datasync, &noreplace, &direct))
        return NULL;
    if (xxh3 == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "kvfs._blockio: no hash function bound");
        return NULL;
    }
    if (hash_piece <= 0 || write_piece <= 0 || write_piece % hash_piece || write_piece % ALIGN) {
        PyErr_SetString(PyExc_ValueError, "write_piece must be a positive multiple of hash_piece and the page");
        return NULL;
    }
    Py_buffer header, payload;
    if (get_buffer(header_obj, &header, 1, "header") < 0) return NULL;
    if (sum_off < 0 || hsum_off < 0 || sum_off + 8 > hsum_off || hsum_off + 8 > header.len) {
        PyBuffer_Release(&header);
        PyErr_SetString(PyExc_ValueError, "checksum offsets outside the header");
        return NULL;
    }
    if (get_buffer(payload_obj, &payload, 0, "payload") < 0) {
        PyBuffer_Release(&header);
        return NULL;
    }
    int outcome = ST_STORED, err = 0, fallback = FB_NONE;
    uint64_t checksum = known ? (uint64_t)known_sum : 0;
    unsigned char *hbuf = header.buf;
    const unsigned char *pbuf = payload.buf;
    size_t plen = (size_t)payload.len, hlen = (size_t)header.len;

    Py_BEGIN_ALLOW_THREADS
    int fd = -1, use_direct = direct;
    if (access(final, F_OK) == 0) {
        outcome = ST_EXISTS;
        goto done;
    }
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
    fd = open_creating_dirs(tmp, flags | (use_direct ? O_DIRECT : 0), (mode_t)mode, (mode_t)dir_mode, chmod_dirs);
    if (fd < 0 && use_direct && errno == EINVAL) {
        fallback = FB_OPEN;
        use_direct = 0;
        fd = open_creating_dirs(tmp, flags, (mode_t)mode, (mode_t)dir_mode, chmod_dirs);
    }
    if (fd < 0) {
        outcome = ST_OPEN_FAILED;
        err = errno;
        goto done;
    }
    if (do_fchmod && fchmod(fd, (mode_t)mode) < 0) goto failed;
    if (use_direct && ((plen && !ALIGNED(pbuf)) || !ALIGNED(hbuf) || hlen % ALIGN)) {
        clear_direct(fd, &use_direct);
        fallback = FB_UNALIGNED;
    }
    /* With O_DIRECT only whole pages go direct; the tail goes through the page cache. */
    size_t direct_end = use_direct ? plen / ALIGN * ALIGN : 0;
    if (!known && plen <= (size_t)write_piece) {
        /* One step: hashed whole, then header and payload in one system call. */
        pieces_t pieces;
        if (!pieces_init(&pieces, plen, (size_t)hash_piece)) {
            errno = ENOMEM;
            goto failed;
        }
        pieces_feed(&pieces, pbuf, plen);
        checksum = pieces_final(&pieces);
        known = 1;
    }
    if (known) {
        put_le64(hbuf + sum_off, checksum);
        put_le64(hbuf + hsum_off, xxh3(hbuf, (size_t)hsum_off));
        if (use_direct && !direct_end) clear_direct(fd, &use_direct); /* under a page of payload */
        size_t first = use_direct ? direct_end : plen;
        struct iovec iov[2] = {{hbuf, hlen}, {(void *)pbuf, first}};
        if (write_all(fd, iov, first ? 2 : 1, 0) < 0) {
            if (errno != EINVAL || !use_direct) goto failed;
            clear_direct(fd, &use_direct);
            fallback = FB_WRITE_EINVAL;
            first = plen;
            struct iovec again[2] = {{hbuf, hlen}, {(void *)pbuf, plen}};
            if (write_all(fd, again, plen ? 2 : 1, 0) < 0) goto failed;
        }
        if (first < plen) {
            clear_direct(fd, &use_direct);
            if (write_at(fd, pbuf + first, plen - first, (off_t)(hlen + first), &use_direct, &fallback) < 0)
                goto failed;
        }
    } else {
        pieces_t pieces;
        if (!pieces_init(&pieces, plen, (size_t)hash_piece)) {
            errno = ENOMEM;
            goto failed;
        }
        /* Each piece is hashed just before it is written, while it is still in the CPU cache. */
        for (size_t pos = 0; pos < plen; pos += (size_t)write_piece) {
            size_t take = plen - pos < (size_t)write_piece ? plen - pos : (size_t)write_piece;
            pieces_feed(&pieces, pbuf + pos, take);
            size_t whole = take;
            if (use_direct && pos + take > direct_end) whole = direct_end - pos; /* the last, unaligned step */
            int bad = whole && write_at(fd, pbuf + pos, whole, (off_t)(hlen + pos), &use_direct, &fallback) < 0;
            if (!bad && whole < take) {
                clear_direct(fd, &use_direct);
                bad = write_at(fd, pbuf + pos + whole, take - whole, (off_t)(hlen + pos + whole), &use_direct,
                               &fallback) < 0;
            }
            if (bad) {
                int saved = errno;
                pieces_free(&pieces);
                errno = saved;
                goto failed;
            }
        }
        checksum = pieces_final(&pieces);
        put_le64(hbuf + sum_off, checksum);
        put_le64(hbuf + hsum_off, xxh3(hbuf, (size_t)hsum_off));
        if (write_at(fd, hbuf, hlen, 0, &use_direct, &fallback) < 0) goto failed;
    }
    if (datasync && fdatasync(fd) < 0) goto failed;
    if (close(fd) < 0) {
        fd = -1;
        goto failed;
    }
    fd = -1;
    if (noreplace) {
        if (syscall(SYS_renameat2, AT_FDCWD, tmp, AT_FDCWD, final, RENAME_NOREPLACE) == 0) goto done;
        if (errno == EEXIST) {
            unlink(tmp);
            outcome = ST_EXISTS;
            goto done;
        }
        if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
            outcome = ST_NOREPLACE_REFUSED;
            err = errno;
            goto done;
        }
        goto failed;
    }
    /* stat + rename where RENAME_NOREPLACE is refused (NFS): the window between them is the filesystem's. */
    if (access(final, F_OK) == 0) {
        unlink(tmp);
        outcome = ST_EXISTS;
        goto done;
    }
    if (rename(tmp, final) == 0) goto done;
    if (errno == EEXIST) {
        unlink(tmp);
        outcome = ST_EXISTS;
        goto done;
    }
failed:
    err = errno;
    outcome = ST_FAILED;
    if (fd >= 0) close(fd);
    unlink(tmp);
done:;
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&payload);
    PyBuffer_Release(&header);
    return Py_BuildValue("iii", outcome, err, fallback);
}

/* load(path, header_out, out, verify, hash_piece, read_piece, direct)
 *     -> (outcome, errno, file_size, got, checksum, direct_fallback)
 *
 * Reads the file's first len(header_out) bytes into header_out and what follows (at most len(out) bytes) into
 * out; `got` counts both.  With `verify`, the payload bytes read are hashed (algorithm 2) in `read_piece` steps,
 * each right after it lands; without, everything is read in one call and checksum is 0.  `direct`: O_DIRECT
 * (page-aligned buffers; whole pages, the read stopping at end of file), else through the page cache. */
static PyObject *blockio_load(PyObject *self, PyObject *args) {
    (void)self;
    const char *path;
    PyObject *header_obj, *out_obj;
    int verify, direct;
    Py_ssize_t hash_piece, read_piece;
    if (!PyArg_ParseTuple(args, "yOOpnnp", &path, &header_obj, &out_obj, &verify, &hash_piece, &read_piece,
                          &direct))
        return NULL;
    if (verify && xxh3 == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "kvfs._blockio: no hash function bound");
        return NULL;
    }
    if (hash_piece <= 0 || read_piece <= 0 || read_piece % hash_piece || read_piece % ALIGN) {
        PyErr_SetString(PyExc_ValueError, "read_piece must be a positive multiple of hash_piece and the page");
        return NULL;
    }
    Py_buffer header, out;
    if (get_buffer(header_obj, &header, 1, "header_out") < 0) return NULL;
    if (get_buffer(out_obj, &out, 1, "out") < 0) {
        PyBuffer_Release(&header);
        return NULL;
    }
    int outcome = LD_OK, err = 0, fallback = FB_NONE;
    long long size = 0, got = 0;
    uint64_t checksum = 0;
    unsigned char *hbuf = header.buf, *obuf = out.buf;
    size_t hlen = (size_t)header.len, olen = (size_t)out.len;

    Py_BEGIN_ALLOW_THREADS
    /* Non-blocking: opening a FIFO planted at a block path must not wait for a writer. */
    int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK, use_direct = direct;
    int fd = open(path, flags | (use_direct ? O_DIRECT : 0));
    if (fd < 0 && use_direct && errno == EINVAL) {
        fallback = FB_OPEN;
        use_direct = 0;
        fd = open(path, flags);
    }
    if (fd < 0) {
        err = errno;
        outcome = (err == ENOENT || err == ENOTDIR) ? LD_MISSING : LD_IO_ERROR;
        goto done;
    }
    struct stat st;
    if (fstat_raw(fd, &st) < 0) {
        err = errno;
        outcome = LD_IO_ERROR;
        goto close_done;
    }
    if (!S_ISREG(st.st_mode)) {
        outcome = LD_NOT_REGULAR;
        goto close_done;
    }
    size = (long long)st.st_size;
    size_t want = size > (long long)hlen ? (size_t)(size - (long long)hlen) : 0;
    if (want > olen) want = olen;
    if (use_direct && (!ALIGNED(hbuf) || hlen % ALIGN || (olen && !ALIGNED(obuf)))) {
        clear_direct(fd, &use_direct);
        fallback = FB_UNALIGNED;
    }
    if (!verify) {
        ssize_t n = read_span(fd, hbuf, hlen, obuf, want, olen, 0, &use_direct, &fallback);
        if (n < 0) {
            err = errno;
            outcome = LD_IO_ERROR;
        } else {
            got = n;
        }
        goto close_done;
    }
    pieces_t pieces;
    if (!pieces_init(&pieces, want, (size_t)hash_piece)) {
        err = ENOMEM;
        outcome = LD_IO_ERROR;
        goto close_done;
    }
    /* The header with the first piece, then piece by piece, each hashed while it is still in the CPU cache. */
    size_t first = want < (size_t)read_piece ? want : (size_t)read_piece;
    ssize_t n = read_span(fd, hbuf, hlen, obuf, first, olen, 0, &use_direct, &fallback);
    if (n < 0) {
        err = errno;
        outcome = LD_IO_ERROR;
        pieces_free(&pieces);
        goto close_done;
    }
    got = n;
    if ((size_t)n == hlen + first) {
        pieces_feed(&pieces, obuf, first);
        size_t pos = first;
        while (pos < want) {
            size_t take = want - pos < (size_t)read_piece ? want - pos : (size_t)read_piece;
            n = read_span(fd, NULL, 0, obuf + pos, take, olen - pos, (off_t)(hlen + pos), &use_direct, &fallback);
            if (n < 0) {
                err = errno;
                outcome = LD_IO_ERROR;
                break;
            }
            got += n;
            if ((size_t)n < take) break; /* the file ended early: the caller sees a short read */
            pieces_feed(&pieces, obuf + pos, take);
            pos += take;
        }
    }
    if (outcome == LD_OK && (size_t)got == hlen + want)
        checksum = pieces_final(&pieces);
    else
        pieces_free(&pieces);
close_done:
    close(fd);
done:;
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&out);
    PyBuffer_Release(&header);
    return Py_BuildValue("iiLLKi", outcome, err, size, got, (unsigned long long)checksum, fallback);
}

/* pieces_checksum(buf, hash_piece) -> algorithm 2's checksum of buf, the GIL released. */
static PyObject *blockio_pieces_checksum(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *obj;
    Py_ssize_t hash_piece;
    if (!PyArg_ParseTuple(args, "On", &obj, &hash_piece)) return NULL;
    if (xxh3 == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "kvfs._blockio: no hash function bound");
        return NULL;
    }
    if (hash_piece <= 0) {
        PyErr_SetString(PyExc_ValueError, "hash_piece must be positive");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(obj, &view, 0, "buf") < 0) return NULL;
    uint64_t sum = 0;
    int ok;
    pieces_t pieces;
    Py_BEGIN_ALLOW_THREADS
    ok = pieces_init(&pieces, (size_t)view.len, (size_t)hash_piece);
    if (ok) {
        pieces_feed(&pieces, view.buf, (size_t)view.len);
        sum = pieces_final(&pieces);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (!ok) return PyErr_NoMemory();
    return PyLong_FromUnsignedLongLong(sum);
}

/* bind_xxh3(address): the XXH3_64bits(const void *, size_t) to hash with. */
static PyObject *blockio_bind_xxh3(PyObject *self, PyObject *arg) {
    (void)self;
    void *address = PyLong_AsVoidPtr(arg);
    if (address == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null hash function");
        return NULL;
    }
    xxh3 = (xxh3_fn)address;
    Py_RETURN_NONE;
}

static PyMethodDef blockio_methods[] = {
    {"store", blockio_store, METH_VARARGS, "Publish one block file (see kvfs/nativeio.py)."},
    {"load", blockio_load, METH_VARARGS, "Read one block file (see kvfs/nativeio.py)."},
    {"pieces_checksum", blockio_pieces_checksum, METH_VARARGS, "Checksum algorithm 2 of a buffer."},
    {"bind_xxh3", blockio_bind_xxh3, METH_O, "Bind the XXH3_64bits function to hash with."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef blockio_module = {
    PyModuleDef_HEAD_INIT, "kvfs._blockio", "Block-file system calls without the GIL.", -1, blockio_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__blockio(void) { return PyModule_Create(&blockio_module); }
