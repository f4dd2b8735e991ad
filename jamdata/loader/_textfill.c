/* The text packer's inner loop: copy a stretch of a shuffle block's token stream into a row
 * (converting the token dtype) and write each token's document index, across as many windows
 * of back-to-back documents as the stretch covers. The same in Python is
 * jamdata.loader.textfill.BlockPy; both are tested against each other. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
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


/* A shuffle block of a Megatron dataset as a token stream (see jamdata.loader.lane.TextBlock):
 * the token offset of each readable document (`cum`, with the total last), their positions in
 * the block (`nz`), and the windows of back-to-back documents: first document (`wstart`, with
 * the document count last), shard offset of stream position 0 (`wtok`), shard (`wshard`, an
 * index into `shards`). The buffers are held for the block's life. */
typedef struct {
    PyObject_HEAD
    Buf cum, nz, wstart, wtok, wshard;
    Buf *shards;
    Py_ssize_t n_shards, n_docs, n_win;
    int64_t b0, size;
} Block;

static void Block_dealloc(Block *self) {
    release(&self->cum); release(&self->nz); release(&self->wstart); release(&self->wtok); release(&self->wshard);
    if (self->shards) {
        for (Py_ssize_t i = 0; i < self->n_shards; i++) release(&self->shards[i]);
        PyMem_Free(self->shards);
    }
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
    PyObject *cum, *nz, *wstart, *wtok, *wshard, *shards;
    long long b0, size;
    if (!PyArg_ParseTuple(args, "OOOOOOLL", &cum, &nz, &wstart, &wtok, &wshard, &shards, &b0, &size)) return -1;
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
    if (self->n_docs < 0 || self->n_win < 0 || self->nz.view.len / 8 != self->n_docs ||
        self->wtok.view.len / 8 != self->n_win || self->wshard.view.len / 8 != self->n_win) {
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

/* Block.fill(tokens, seg, done, n, pos, offset, c0) -> (copied, d0, d1, pos, offset)
 * From the lane's position (pos in the block's positions, offset in that document; an
 * unreadable position means the next readable document), copy up to n - done tokens into
 * tokens[done:] (stopping at the block's end) and write c0 + (document - d0) into seg[done:].
 * Documents d0 .. d1-1 were touched; (pos, offset) is the position after the copy. */
static PyObject *Block_fill(Block *self, PyObject *const *args, Py_ssize_t nargs) {
    Buf out = {0}, seg = {0};
    PyObject *result = NULL;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "fill takes 7 arguments");
        return NULL;
    }
    int64_t done = PyLong_AsLongLong(args[2]), n = PyLong_AsLongLong(args[3]);
    int64_t pos = PyLong_AsLongLong(args[4]), offset = PyLong_AsLongLong(args[5]), c0 = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (get_buf(args[0], &out, PyBUF_WRITABLE | PyBUF_FORMAT, "tokens") < 0) goto done;
    if (get_buf(args[1], &seg, PyBUF_WRITABLE | PyBUF_FORMAT, "seg") < 0) goto done;
    int osgn, ssgn;
    int osize = int_kind(&out.view, &osgn);
    if (!((osize == 4 || osize == 8) && osgn) || int_kind(&seg.view, &ssgn) != 4 || !ssgn) {
        PyErr_SetString(PyExc_TypeError, "fill: tokens must be int32 or int64 and seg int32");
        goto done;
    }
    Py_ssize_t cap = out.view.len / osize < seg.view.len / 4 ? out.view.len / osize : seg.view.len / 4;
    if (done < 0 || n > cap || done > n || offset < 0) {
        PyErr_SetString(PyExc_ValueError, "fill: done/n/offset out of range");
        goto done;
    }
    const int64_t *cum = (const int64_t *)self->cum.view.buf, *nz = (const int64_t *)self->nz.view.buf;
    const int64_t *wstart = (const int64_t *)self->wstart.view.buf, *wtok = (const int64_t *)self->wtok.view.buf;
    const int64_t *wshard = (const int64_t *)self->wshard.view.buf;
    Py_ssize_t nd = self->n_docs;
    /* first readable document at or after pos */
    Py_ssize_t lo = 0, hi = nd;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (nz[mid] < pos - self->b0) lo = mid + 1; else hi = mid;
    }
    Py_ssize_t d = lo, d0 = lo;
    if (d == nd) {
        result = Py_BuildValue("(LnnLL)", 0LL, nd, nd, (long long)(self->b0 + self->size), 0LL);
        goto done;
    }
    int64_t t = cum[d] + offset, total = cum[nd];
    if (t >= cum[d + 1]) {
        PyErr_SetString(PyExc_ValueError, "fill: offset past the end of its document");
        goto done;
    }
    Py_ssize_t w = upper(wstart, self->n_win + 1, d) - 1;
    char *obuf = (char *)out.view.buf;
    int32_t *sbuf = (int32_t *)seg.view.buf;
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
    /* d: the document holding t (nd at the block's end) */
    if (d < nd)
        result = Py_BuildValue("(LnnLL)", (long long)(filled - done), d0, t > cum[d] ? d + 1 : d,
                               (long long)(self->b0 + nz[d]), (long long)(t - cum[d]));
    else
        result = Py_BuildValue("(LnnLL)", (long long)(filled - done), d0, nd, (long long)(self->b0 + self->size), 0LL);
done:
    release(&out);
    release(&seg);
    return result;
}

static PyMethodDef Block_methods[] = {
    {"fill", (PyCFunction)(void (*)(void))Block_fill, METH_FASTCALL, "Copy the lane's next tokens of this block into a row."},
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
    .tp_init = (initproc)Block_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_textfill", NULL, -1, methods};

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
