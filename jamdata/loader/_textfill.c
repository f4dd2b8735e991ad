/* The text packer's inner loop: copy a stretch of a shuffle block's token stream into a row
 * (converting the token dtype) and write each token's document index, across as many windows
 * of back-to-back documents as the stretch covers. The same in Python is
 * jamdata.loader.textfill (BlockPy, fill_rows_py); both are tested against each other. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int get_buf(PyObject *obj, Buf *b, int flags, const char *what) {
    if (PyObject_GetBuffer(obj, &b->view, flags | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Format(PyExc_TypeError, "textfill: %s must be a C-contiguous array", what);
        return -1;
    }
    b->held = 1;
    return 0;
}

static void release(Buf *b) {
    if (b->held) {
        PyBuffer_Release(&b->view);
        b->held = 0;
    }
}

/* kind of an integer buffer from its struct format: 0 unknown, else itemsize with sign */
static int int_kind(const Py_buffer *v, int *is_signed) {
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@' || *f == '|') f++;
    switch (*f) {
    case 'b': *is_signed = 1; return 1;
    case 'B': *is_signed = 0; return 1;
    case 'h': *is_signed = 1; return 2;
    case 'H': *is_signed = 0; return 2;
    case 'i': *is_signed = 1; return 4;
    case 'I': *is_signed = 0; return 4;
    case 'l': *is_signed = 1; return (int)sizeof(long);
    case 'L': *is_signed = 0; return (int)sizeof(long);
    case 'q': *is_signed = 1; return 8;
    case 'Q': *is_signed = 0; return 8;
    default: return 0;
    }
}

static inline int64_t load(const char *p, Py_ssize_t i, int size, int sgn) {
    switch (size) {
    case 1: return sgn ? (int64_t)((const int8_t *)p)[i] : (int64_t)((const uint8_t *)p)[i];
    case 2: return sgn ? (int64_t)((const int16_t *)p)[i] : (int64_t)((const uint16_t *)p)[i];
    case 4: return sgn ? (int64_t)((const int32_t *)p)[i] : (int64_t)((const uint32_t *)p)[i];
    default: return ((const int64_t *)p)[i];
    }
}

static __attribute__((noinline)) void copy_tokens(char *restrict dst, int dsize, const char *restrict src, int ssize, int ssgn, Py_ssize_t n) {
    Py_ssize_t i;
    if (dsize == 4 && ssize == 2 && !ssgn) {
        const uint16_t *restrict s = (const uint16_t *)src;
        int32_t *restrict d = (int32_t *)dst;
        for (i = 0; i < n; i++) d[i] = (int32_t)s[i];
    } else if (dsize == 8 && ssize == 2 && !ssgn) {
        const uint16_t *restrict s = (const uint16_t *)src;
        int64_t *restrict d = (int64_t *)dst;
        for (i = 0; i < n; i++) d[i] = (int64_t)s[i];
    } else if (dsize == ssize && ssgn) {
        memcpy(dst, src, (size_t)n * (size_t)dsize);
    } else if (dsize == 4) {
        int32_t *d = (int32_t *)dst;
        for (i = 0; i < n; i++) d[i] = (int32_t)load(src, i, ssize, ssgn);
    } else {
        int64_t *d = (int64_t *)dst;
        for (i = 0; i < n; i++) d[i] = load(src, i, ssize, ssgn);
    }
}


/* A shuffle block of a Megatron dataset as a token stream (see jamdata.loader.packing.TextBlock):
 * the token offset of each readable document (`cum`, with the total last), their positions in
 * the block (`nz`), and the windows of back-to-back documents: first document (`wstart`, with
 * the document count last), shard offset of stream position 0 (`wtok`), shard (`wshard`, an
 * index into `shards`); `keys`, the readable documents' keys. The buffers are held for the
 * block's life. `pos` and `offset` are the reading lane's position (its Cursor reads them). */
typedef struct {
    PyObject_HEAD
    Buf cum, nz, wstart, wtok, wshard;
    Buf *shards;
    PyObject *keys;
    Py_ssize_t n_shards, n_docs, n_win;
    long long b0, size, pos, offset;
} Block;

static void Block_dealloc(Block *self) {
    release(&self->cum); release(&self->nz); release(&self->wstart); release(&self->wtok); release(&self->wshard);
    if (self->shards) {
        for (Py_ssize_t i = 0; i < self->n_shards; i++) release(&self->shards[i]);
        PyMem_Free(self->shards);
    }
    Py_XDECREF(self->keys);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int int64_buf(PyObject *obj, Buf *b, const char *what) {
    int sgn;
    if (get_buf(obj, b, PyBUF_FORMAT, what) < 0) return -1;
    if (int_kind(&b->view, &sgn) != 8 || !sgn) {
        PyErr_Format(PyExc_TypeError, "Block: %s must be int64", what);
        return -1;
    }
    return 0;
}

static int Block_init(Block *self, PyObject *args, PyObject *kw) {
    PyObject *cum, *nz, *wstart, *wtok, *wshard, *shards, *keys;
    long long b0, size;
    if (!PyArg_ParseTuple(args, "OOOOOOLLO!", &cum, &nz, &wstart, &wtok, &wshard, &shards, &b0, &size,
                          &PyList_Type, &keys)) return -1;
    if (self->cum.held) {
        PyErr_SetString(PyExc_RuntimeError, "Block: already initialised");
        return -1;
    }
    if (int64_buf(cum, &self->cum, "cum") < 0 || int64_buf(nz, &self->nz, "nz") < 0 ||
        int64_buf(wstart, &self->wstart, "wstart") < 0 || int64_buf(wtok, &self->wtok, "wtok") < 0 ||
        int64_buf(wshard, &self->wshard, "wshard") < 0) return -1;
    self->n_docs = self->cum.view.len / 8 - 1;
    self->n_win = self->wstart.view.len / 8 - 1;
    self->b0 = b0;
    self->size = size;
    self->pos = b0;
    self->offset = 0;
    Py_INCREF(keys);
    self->keys = keys;
    if (self->n_docs < 0 || self->n_win < 0 || self->nz.view.len / 8 != self->n_docs ||
        self->wtok.view.len / 8 != self->n_win || self->wshard.view.len / 8 != self->n_win ||
        PyList_GET_SIZE(keys) != self->n_docs) {
        PyErr_SetString(PyExc_ValueError, "Block: array lengths disagree");
        return -1;
    }
    PyObject *seq = PySequence_Fast(shards, "Block: shards must be a sequence");
    if (!seq) return -1;
    Py_ssize_t ns = PySequence_Fast_GET_SIZE(seq);
    self->shards = PyMem_Calloc(ns ? ns : 1, sizeof(Buf));
    if (!self->shards) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    self->n_shards = ns;
    for (Py_ssize_t i = 0; i < ns; i++) {
        int sgn;
        if (get_buf(PySequence_Fast_GET_ITEM(seq, i), &self->shards[i], PyBUF_FORMAT, "shard tokens") < 0 ||
            !int_kind(&self->shards[i].view, &sgn)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Block: shard tokens must be an integer array");
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    const int64_t *ws = (const int64_t *)self->wstart.view.buf, *wt = (const int64_t *)self->wtok.view.buf;
    const int64_t *wh = (const int64_t *)self->wshard.view.buf, *cm = (const int64_t *)self->cum.view.buf;
    for (Py_ssize_t w = 0; w < self->n_win; w++) {  /* every window lies inside its shard */
        int sgn;
        if (wh[w] < 0 || wh[w] >= ns || ws[w] < 0 || ws[w + 1] > self->n_docs || ws[w] > ws[w + 1]) {
            PyErr_SetString(PyExc_ValueError, "Block: window out of range");
            return -1;
        }
        const Py_buffer *v = &self->shards[wh[w]].view;
        int64_t lo = wt[w] + cm[ws[w]], hi = wt[w] + cm[ws[w + 1]];
        if (lo < 0 || hi * int_kind(v, &sgn) > v->len) {
            PyErr_SetString(PyExc_ValueError, "Block: a window reaches past its shard's tokens");
            return -1;
        }
    }
    return 0;
}

/* first index i in a[0..n) with a[i] > x (a ascending) */
static Py_ssize_t upper(const int64_t *a, Py_ssize_t n, int64_t x) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (a[mid] <= x) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* The core. From the block's (pos, offset) (an unreadable position means the next readable
 * document), copy up to n - done tokens into out[done:], stopping at the block's end, and write
 * c0 + (document - d0) into seg[done:]; advance (pos, offset). Documents *d0 .. *d1-1 were
 * touched. Returns the number copied; -1 with an exception set; -2, touching nothing, when
 * `whole` is set and the block holds fewer than n - done tokens from the position on. */
static int64_t block_fill(Block *self, char *obuf, int osize, int32_t *sbuf, int64_t done, int64_t n, int64_t c0,
                          int whole, Py_ssize_t *d0p, Py_ssize_t *d1p) {
    const int64_t *cum = (const int64_t *)self->cum.view.buf, *nz = (const int64_t *)self->nz.view.buf;
    const int64_t *wstart = (const int64_t *)self->wstart.view.buf, *wtok = (const int64_t *)self->wtok.view.buf;
    const int64_t *wshard = (const int64_t *)self->wshard.view.buf;
    Py_ssize_t nd = self->n_docs;
    Py_ssize_t lo = 0, hi = nd;
    while (lo < hi) {  /* first readable document at or after pos */
        Py_ssize_t mid = (lo + hi) / 2;
        if (nz[mid] < self->pos - self->b0) lo = mid + 1; else hi = mid;
    }
    Py_ssize_t d = lo;
    *d0p = *d1p = lo;
    if (d == nd) {
        if (whole && n > done) return -2;
        self->pos = self->b0 + self->size;
        self->offset = 0;
        return 0;
    }
    if (self->offset < 0 || cum[d] + self->offset >= cum[d + 1]) {
        PyErr_SetString(PyExc_ValueError, "fill: offset outside its document");
        return -1;
    }
    int64_t t = cum[d] + self->offset, total = cum[nd];
    if (whole && total - t < n - done) return -2;
    Py_ssize_t w = upper(wstart, self->n_win + 1, d) - 1, d0 = d;
    int64_t filled = done;
    while (filled < n && t < total) {
        int64_t take = n - filled < cum[wstart[w + 1]] - t ? n - filled : cum[wstart[w + 1]] - t;
        const Buf *sh = &self->shards[wshard[w]];
        int sgn, ssize = int_kind(&sh->view, &sgn);
        copy_tokens(obuf + filled * osize, osize, (const char *)sh->view.buf + (wtok[w] + t) * ssize, ssize, sgn,
                    (Py_ssize_t)take);
        int64_t end = t + take;
        while (d < nd && cum[d] < end) {
            int64_t a = cum[d] > t ? cum[d] : t, b = cum[d + 1] < end ? cum[d + 1] : end;
            int32_t v = (int32_t)(c0 + (d - d0));
            int32_t *p = sbuf + filled + (a - t);
            for (int64_t i = 0; i < b - a; i++) p[i] = v;
            if (cum[d + 1] <= end) d++; else break;
        }
        filled += take;
        t = end;
        w++;
    }
    if (d < nd) {  /* d: the document holding t */
        *d1p = t > cum[d] ? d + 1 : d;
        self->pos = self->b0 + nz[d];
        self->offset = t - cum[d];
    } else {
        *d1p = nd;
        self->pos = self->b0 + self->size;
        self->offset = 0;
    }
    return filled - done;
}

/* tokens (int32/int64) and seg (int32) buffers of at least n items */
static int out_bufs(PyObject *tok, PyObject *seg, Buf *ob, Buf *sb, int *osize, int64_t n) {
    int osgn, ssgn;
    if (get_buf(tok, ob, PyBUF_WRITABLE | PyBUF_FORMAT, "tokens") < 0) return -1;
    if (get_buf(seg, sb, PyBUF_WRITABLE | PyBUF_FORMAT, "seg") < 0) return -1;
    *osize = int_kind(&ob->view, &osgn);
    if (!((*osize == 4 || *osize == 8) && osgn) || int_kind(&sb->view, &ssgn) != 4 || !ssgn) {
        PyErr_SetString(PyExc_TypeError, "fill: tokens must be int32 or int64 and seg int32");
        return -1;
    }
    if (n > ob->view.len / *osize || n > sb->view.len / 4) {
        PyErr_SetString(PyExc_ValueError, "fill: done/n out of range");
        return -1;
    }
    return 0;
}

/* Block.fill(tokens, seg, done, n, c0) -> (copied, d0, d1); see block_fill */
static PyObject *Block_fill(Block *self, PyObject *const *args, Py_ssize_t nargs) {
    Buf out = {0}, seg = {0};
    PyObject *result = NULL;
    int osize;
    Py_ssize_t d0, d1;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fill takes 5 arguments");
        return NULL;
    }
    int64_t done = PyLong_AsLongLong(args[2]), n = PyLong_AsLongLong(args[3]), c0 = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (done < 0 || done > n) {
        PyErr_SetString(PyExc_ValueError, "fill: done/n out of range");
        return NULL;
    }
    if (out_bufs(args[0], args[1], &out, &seg, &osize, n) == 0) {
        int64_t got = block_fill(self, (char *)out.view.buf, osize, (int32_t *)seg.view.buf, done, n, c0, 0, &d0, &d1);
        if (got >= 0) result = Py_BuildValue("(Lnn)", (long long)got, d0, d1);
    }
    release(&out);
    release(&seg);
    return result;
}

static PyTypeObject BlockType;

/* fill_rows(tokens, seg, L, blocks) -> list: for each b whose blocks[b] is a Block holding at
 * least L more tokens, fill row b (items b*L .. b*L+L-1) from it and put the list of its keys
 * (its segment ids index into it) at b; None elsewhere, leaving the row untouched. */
static PyObject *fill_rows(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    Buf out = {0}, seg = {0};
    PyObject *result = NULL;
    int osize;
    if (nargs != 4 || !PyList_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "fill_rows(tokens, seg, L, blocks: list)");
        return NULL;
    }
    int64_t L = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    PyObject *blocks = args[3];
    Py_ssize_t B = PyList_GET_SIZE(blocks);
    if (L <= 0 || out_bufs(args[0], args[1], &out, &seg, &osize, B * L) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "fill_rows: L must be positive");
        goto done;
    }
    result = PyList_New(B);
    if (!result) goto done;
    for (Py_ssize_t b = 0; b < B; b++) {
        PyObject *item = PyList_GET_ITEM(blocks, b), *keys = Py_None;
        if (Py_TYPE(item) == &BlockType) {
            Block *blk = (Block *)item;
            Py_ssize_t d0, d1;
            int64_t got = block_fill(blk, (char *)out.view.buf, osize, (int32_t *)seg.view.buf, b * L, b * L + L, 0, 1,
                                     &d0, &d1);
            if (got == -1) { Py_CLEAR(result); goto done; }
            if (got >= 0) {  /* the row's segment ids are its documents' indices in `keys` */
                keys = PyList_GetSlice(blk->keys, d0, d1);
                if (!keys) { Py_CLEAR(result); goto done; }
                PyList_SET_ITEM(result, b, keys);
                continue;
            }
        }
        Py_INCREF(Py_None);
        PyList_SET_ITEM(result, b, Py_None);
    }
done:
    release(&out);
    release(&seg);
    return result;
}

static PyMemberDef Block_members[] = {
    {"pos", T_LONGLONG, offsetof(Block, pos), 0, "the reading lane's position in its span"},
    {"offset", T_LONGLONG, offsetof(Block, offset), 0, "tokens of the document at pos already read"},
    {"b0", T_LONGLONG, offsetof(Block, b0), READONLY, "the block's first position in the lane's span"},
    {"size", T_LONGLONG, offsetof(Block, size), READONLY, "positions in the block"},
    {"keys", T_OBJECT_EX, offsetof(Block, keys), READONLY, "the readable documents' keys"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef Block_methods[] = {
    {"fill", (PyCFunction)(void (*)(void))Block_fill, METH_FASTCALL, "Copy the lane's next tokens of this block."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jamdata.loader._textfill.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = (destructor)Block_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A text shuffle block's token stream (see jamdata.loader.textfill.BlockPy).",
    .tp_methods = Block_methods,
    .tp_members = Block_members,
    .tp_init = (initproc)Block_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef methods[] = {
    {"fill_rows", (PyCFunction)(void (*)(void))fill_rows, METH_FASTCALL, "Fill whole rows from their lanes' blocks."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_textfill", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__textfill(void) {
    if (PyType_Ready(&BlockType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&BlockType);
    if (PyModule_AddObject(m, "Block", (PyObject *)&BlockType) < 0) {
        Py_DECREF(&BlockType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
