/* nfsentry._fastpath: the common cases of Engine.process_raw, compiled.
 *
 * The rules live in nfsentry/core/engine.py (Engine._build_process, ``run``): that Python body is the
 * reference and decides every packet this code does not. FastPath is a conservative shortcut for
 * the packets that make up nearly all of a flood or a scan, and it only decides a packet when
 * the Python body would certainly give the same answer and the same state:
 *
 *   - the packet has one of decode()'s fast shapes (IPv4 without options or IPv6 without
 *     extension headers, unfragmented, a complete TCP or UDP header; the same checks);
 *   - its source is outside the ignore set (checked here in full: exact addresses, then the
 *     networks), and no FTP expectation is pending (TCP);
 *   - the source is blocked and the block has not ended -> DROP;
 *   - or the hit is recorded (new source, a source quiet for longer than the window, or a
 *     tracked one) and no policy reacts -> COUNT. Anything that could react, an ended block,
 *     ports that left the window: the Python body, called before any state was touched.
 *
 * The state stays in the engine's own Python containers (dict, OrderedDict, deque, list); only
 * the per-source record is a C type (Source), whose attributes the Python body reads and writes
 * like those of its own class. tests/unit/test_engine_compiled.py runs both on the same packets
 * and compares every decision and the whole state.
 *
 * Memory safety: the packet is only read at fixed offsets after its length was checked.
 *
 * Per-packet cost (the daemon's verdict loop calls this for every queued packet): called through
 * vectorcall (no argument tuple); the ignore set's lookup tables are read once per rebuild of the
 * set (PrefixSet.version), not per packet, and its first-octet prefilter is a bitmap here; the
 * lean results are preallocated ints. bench/bench_core.py and bench/bench_daemon.py measure it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <descrobject.h>
#include <string.h>

/* Action values, the lean result code and the fast shapes' checks: generated from the Python
 * definitions (core/engine.py, core/packet.py) by core/cdefs.py */
#include "_fastpath_defs.h"

/* ---- Source: one tracked source (engine._Source) ------------------------------------------- */

typedef struct {
    PyObject_HEAD
    long long hits;
    PyObject *ports;     /* int port key, or dict port key -> last hit time */
    PyObject *labels;    /* tuple of label strings */
    int protos;          /* 1 tcp, 2 udp, 4 other */
    double first;
    double last;
    char seen;           /* CLOCK reference bit */
} Source;

static void Source_dealloc(Source *s) {
    Py_XDECREF(s->ports);
    Py_XDECREF(s->labels);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMemberDef Source_members[] = {
    {"hits", T_LONGLONG, offsetof(Source, hits), 0, NULL},
    {"ports", T_OBJECT_EX, offsetof(Source, ports), 0, NULL},
    {"labels", T_OBJECT_EX, offsetof(Source, labels), 0, NULL},
    {"protos", T_INT, offsetof(Source, protos), 0, NULL},
    {"first", T_DOUBLE, offsetof(Source, first), 0, NULL},
    {"last", T_DOUBLE, offsetof(Source, last), 0, NULL},
    {"seen", T_BOOL, offsetof(Source, seen), 0, NULL},
    {NULL}
};

/* No GC support: a Source holds an int or a dict of ints -> floats, and a tuple of strings,
 * which can never lead back to it. */
static PyTypeObject SourceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nfsentry._fastpath.Source",
    .tp_doc = "Per-source state of the engine (see engine._Source).",
    .tp_basicsize = sizeof(Source),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Source_dealloc,
    .tp_members = Source_members,
};

/* ---- FastPath ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;  /* FastPath_vectorcall: process_raw(raw, now) without a tuple */
    PyObject *engine;       /* for ignore, expectations, _evict, _compact_clock */
    PyObject *states;       /* dict key -> Source */
    PyObject *blocked;      /* OrderedDict key -> until */
    PyObject *counts;       /* list of ints (per action, then the engine's own counters) */
    PyObject *clock;        /* deque of keys */
    PyObject *fallback;     /* the Python body: run(raw, now) */
    PyObject *labels;       /* tuple of 257 label strings: TCP by flags byte, [256] "UDP" */
    PyObject *one_labels;   /* tuple of 257 one-label tuples, same index */
    unsigned char instant[257];  /* does this label react instantly (same index) */
    double window;
    double trigger;         /* hits > trigger reacts; inf = off */
    long window_ports;
    long port_cap;
    Py_ssize_t max_sources;
    int v6len;
    unsigned long long handled, fallbacks;
    /* The engine's ignore set as last seen (a PrefixSet; replaceable at any time, see
     * ignore_tables): valid while engine.ignore is ``ign`` and ``ign.version`` is ``ign_version``
     * (every rebuild of its tables bumps it). ``ign`` is held, so its identity cannot be reused. */
    PyObject *ign;          /* NULL: nothing cached */
    long long ign_version;
    int ign_usable;         /* 0: not the shape this code knows: the Python body decides */
    PyObject *ign_exact;    /* frozenset of whole addresses (bytes) */
    PyObject *ign_v4;       /* ((mask, set of network ints), ...) */
    PyObject *ign_v6;
    PyObject *ign_pre6;     /* frozenset of leading bytes, or None (no useful prefilter) */
    Py_ssize_t ign_pre6_bytes;
    unsigned char ign_pre4[32];  /* bitmap of PrefixSet.pre4: first octets a network covers */
    PyObject *lean_drop[2], *lean_count[2];  /* the lean results, [0] TCP [1] UDP */
    /* Slots read without an attribute lookup: ``version`` of the ignore set's type (then
     * ign_version_obj is the object read at the last refresh: the same object, the same tables)
     * and ``pending`` of the expectations' type (daemon.ftpqueue.LockedExpectations). Offsets are
     * those of the types' own member descriptors; -1: no such slot, look the attribute up. */
    PyTypeObject *ign_type, *exp_type;
    Py_ssize_t ign_version_at, exp_pending_at;
    PyObject *ign_version_obj;
} FastPath;

static PyObject *str_ignore, *str_exact, *str_v4, *str_v6, *str_expectations, *str_pending, *str_pre4, *str_pre6,
    *str_pre6_bytes, *str_version, *str_evict, *str_compact, *str_append;

static int FastPath_traverse(FastPath *f, visitproc visit, void *arg) {
    Py_VISIT(f->engine);
    Py_VISIT(f->states);
    Py_VISIT(f->blocked);
    Py_VISIT(f->counts);
    Py_VISIT(f->clock);
    Py_VISIT(f->fallback);
    Py_VISIT(f->labels);
    Py_VISIT(f->one_labels);
    Py_VISIT(f->ign);
    Py_VISIT(f->ign_exact);
    Py_VISIT(f->ign_v4);
    Py_VISIT(f->ign_v6);
    Py_VISIT(f->ign_pre6);
    Py_VISIT(f->ign_type);
    Py_VISIT(f->exp_type);
    Py_VISIT(f->ign_version_obj);
    return 0;
}

/* The offset of ``type``'s own slot ``name`` (a member descriptor holding an object), or -1. */
static Py_ssize_t slot_offset(PyTypeObject *type, PyObject *name) {
    PyObject *d = PyObject_GetAttr((PyObject *)type, name);
    Py_ssize_t at = -1;
    if (d && Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_common.d_type == type) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if ((m->type == T_OBJECT_EX || m->type == T_OBJECT) && !(m->flags & READONLY))
            at = m->offset;
    }
    Py_XDECREF(d);
    PyErr_Clear();
    return at;
}

/* obj's slot at ``at`` (borrowed; NULL when unset), obj being of the type the offset is for */
static inline PyObject *slot_get(PyObject *obj, Py_ssize_t at) { return *(PyObject **)((char *)obj + at); }

static void ignore_forget(FastPath *f) {
    Py_CLEAR(f->ign);
    Py_CLEAR(f->ign_exact);
    Py_CLEAR(f->ign_v4);
    Py_CLEAR(f->ign_v6);
    Py_CLEAR(f->ign_pre6);
    Py_CLEAR(f->ign_type);
    Py_CLEAR(f->ign_version_obj);
    f->ign_usable = 0;
}

static int FastPath_clear(FastPath *f) {
    Py_CLEAR(f->engine);
    Py_CLEAR(f->states);
    Py_CLEAR(f->blocked);
    Py_CLEAR(f->counts);
    Py_CLEAR(f->clock);
    Py_CLEAR(f->fallback);
    Py_CLEAR(f->labels);
    Py_CLEAR(f->one_labels);
    ignore_forget(f);
    Py_CLEAR(f->exp_type);
    for (int i = 0; i < 2; i++) {
        Py_CLEAR(f->lean_drop[i]);
        Py_CLEAR(f->lean_count[i]);
    }
    return 0;
}

static void FastPath_dealloc(FastPath *f) {
    PyObject_GC_UnTrack(f);
    FastPath_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static int FastPath_init(FastPath *f, PyObject *args, PyObject *kw) {
    static char *names[] = {"engine", "states", "blocked", "counts", "clock", "fallback", "labels",
                            "one_labels", "instant", "window", "trigger", "window_ports", "port_cap",
                            "max_sources", "v6len", NULL};
    PyObject *engine, *states, *blocked, *counts, *clock, *fallback, *labels, *one_labels;
    Py_buffer instant;
    double window, trigger;
    long window_ports, port_cap;
    Py_ssize_t max_sources;
    int v6len;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!O!O!OOO!O!y*ddllni", names, &engine, &PyDict_Type, &states,
                                     &PyDict_Type, &blocked, &PyList_Type, &counts, &clock, &fallback,
                                     &PyTuple_Type, &labels, &PyTuple_Type, &one_labels, &instant, &window,
                                     &trigger, &window_ports, &port_cap, &max_sources, &v6len))
        return -1;
    if (instant.len != 257 || PyTuple_GET_SIZE(labels) != 257 || PyTuple_GET_SIZE(one_labels) != 257 ||
        PyList_GET_SIZE(counts) < NFS_N_ACTIONS || v6len < 0 || v6len > 128 || !PyCallable_Check(fallback)) {
        PyBuffer_Release(&instant);
        PyErr_SetString(PyExc_ValueError, "FastPath: bad tables");
        return -1;
    }
    memcpy(f->instant, instant.buf, 257);
    PyBuffer_Release(&instant);
    FastPath_clear(f);
    Py_INCREF(engine); f->engine = engine;
    Py_INCREF(states); f->states = states;
    Py_INCREF(blocked); f->blocked = blocked;
    Py_INCREF(counts); f->counts = counts;
    Py_INCREF(clock); f->clock = clock;
    Py_INCREF(fallback); f->fallback = fallback;
    Py_INCREF(labels); f->labels = labels;
    Py_INCREF(one_labels); f->one_labels = one_labels;
    f->window = window;
    f->trigger = trigger;
    f->window_ports = window_ports;
    f->port_cap = port_cap;
    f->max_sources = max_sources;
    f->v6len = v6len;
    for (int i = 0; i < 2; i++) {
        unsigned proto = i ? NFS_PROTO_UDP : NFS_PROTO_TCP;
        if (!(f->lean_drop[i] = PyLong_FromLong(NFS_LEAN(NFS_ACTION_DROP, proto))) ||
            !(f->lean_count[i] = PyLong_FromLong(NFS_LEAN(NFS_ACTION_COUNT, proto))))
            return -1;
    }
    return 0;
}

static inline unsigned be16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }

/* counts[i] += 1 */
static int bump(PyObject *counts, Py_ssize_t i) {
    PyObject *old = PyList_GET_ITEM(counts, i);
    PyObject *one = PyLong_FromLong(1);
    PyObject *n = PyNumber_Add(old, one);
    Py_DECREF(one);
    if (!n)
        return -1;
    PyList_SET_ITEM(counts, i, n);   /* steals n */
    Py_DECREF(old);
    return 0;
}

/* Read the tables of the ignore set ``ignore`` (a PrefixSet, not None) into f->ign*, unless they
 * are those of its current version already. 0: done (f->ign_usable says whether this code can
 * use them), -1: error. */
static int ignore_tables(FastPath *f, PyObject *ignore) {
    if (ignore == f->ign && f->ign_type && Py_TYPE(ignore) == f->ign_type &&
        slot_get(ignore, f->ign_version_at) == f->ign_version_obj)
        return 0;               /* the same set, the same version object: the same tables */
    PyObject *ver = PyObject_GetAttr(ignore, str_version);
    long long v = -1;
    if (ver) {
        v = PyLong_CheckExact(ver) ? PyLong_AsLongLong(ver) : -1;
        if (v == -1 && PyErr_Occurred())
            PyErr_Clear();
    } else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();          /* not a PrefixSet: nothing to cache, Python decides */
    } else {
        return -1;
    }
    if (ignore == f->ign && v == f->ign_version && v != -1) {
        Py_XSETREF(f->ign_version_obj, ver);    /* an equal version, another object */
        return 0;
    }
    ignore_forget(f);
    Py_INCREF(ignore);
    f->ign = ignore;
    f->ign_version = v;
    f->ign_version_obj = ver;   /* (NULL when there is none) */
    if (v == -1)
        return 0;               /* unusable: f->ign_usable stays 0 */
    f->ign_version_at = slot_offset(Py_TYPE(ignore), str_version);
    if (f->ign_version_at >= 0)
        f->ign_type = (PyTypeObject *)Py_NewRef(Py_TYPE(ignore));
    PyObject *exact = PyObject_GetAttr(ignore, str_exact);
    PyObject *t4 = exact ? PyObject_GetAttr(ignore, str_v4) : NULL;
    PyObject *t6 = t4 ? PyObject_GetAttr(ignore, str_v6) : NULL;
    PyObject *pre4 = t6 ? PyObject_GetAttr(ignore, str_pre4) : NULL;
    PyObject *pre6 = pre4 ? PyObject_GetAttr(ignore, str_pre6) : NULL;
    PyObject *nb = pre6 ? PyObject_GetAttr(ignore, str_pre6_bytes) : NULL;
    int ok = 0, err = nb == NULL;
    if (!err) {
        Py_ssize_t n = PyLong_CheckExact(nb) ? PyLong_AsSsize_t(nb) : -1;
        if (n == -1 && PyErr_Occurred())
            PyErr_Clear();
        /* immutable containers only: the tables cannot change without a new version */
        ok = PyFrozenSet_CheckExact(exact) && PyTuple_CheckExact(t4) && PyTuple_CheckExact(t6) && PyFrozenSet_CheckExact(pre4) &&
             (pre6 == Py_None || PyFrozenSet_CheckExact(pre6)) && n >= 0 && n <= 16;
        memset(f->ign_pre4, 0, sizeof f->ign_pre4);
        PyObject *it = ok ? PyObject_GetIter(pre4) : NULL, *o;
        if (ok && !it)
            err = 1;
        while (it && ok && (o = PyIter_Next(it))) {
            long octet = PyLong_CheckExact(o) ? PyLong_AsLong(o) : -1;
            Py_DECREF(o);
            if (octet < 0 || octet > 255) {
                PyErr_Clear();
                ok = 0;         /* not first octets: the Python body decides */
            } else {
                f->ign_pre4[octet >> 3] |= (unsigned char)(1u << (octet & 7));
            }
        }
        if (it && PyErr_Occurred())
            err = 1;
        Py_XDECREF(it);
        ok = ok && !err;
        if (ok) {
            f->ign_exact = Py_NewRef(exact);
            f->ign_v4 = Py_NewRef(t4);
            f->ign_v6 = Py_NewRef(t6);
            f->ign_pre6 = Py_NewRef(pre6);
            f->ign_pre6_bytes = n;
            f->ign_usable = 1;
        }
    }
    Py_XDECREF(exact);
    Py_XDECREF(t4);
    Py_XDECREF(t6);
    Py_XDECREF(pre4);
    Py_XDECREF(pre6);
    Py_XDECREF(nb);
    if (err) {
        ignore_forget(f);
        return -1;
    }
    return 0;
}

/* Past the IPv6 prefilter: PrefixSet._v6, ((mask, set of masked network ints), ...), checked
 * with Python ints (128 bits). 1 inside (or cannot tell), 0 not, -1 error. */
static int in_v6_networks(PyObject *table, const unsigned char *src) {
    int r = 0;
    PyObject *a = PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "y#s", (const char *)src, (Py_ssize_t)16, "big");
    if (!a)
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(table) && !r; i++) {
        PyObject *entry = PyTuple_GET_ITEM(table, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) { r = 1; break; }
        PyObject *net = PyNumber_And(a, PyTuple_GET_ITEM(entry, 0));
        r = net ? PySequence_Contains(PyTuple_GET_ITEM(entry, 1), net) : -1;
        Py_XDECREF(net);
    }
    Py_DECREF(a);
    return r;
}

/* 1: the source may be in the ignore set (let Python decide), 0: certainly not, -1: error.
 * The set's exact addresses, then its networks one prefix length at a time behind the
 * prefilters (first octet / leading IPv6 bytes), as PrefixSet.contains does. */
static int maybe_ignored(FastPath *f, const unsigned char *src, int v4, PyObject *key) {
    PyObject *ignore = PyObject_GetAttr(f->engine, str_ignore);
    if (!ignore)
        return -1;
    if (ignore == Py_None) {
        Py_DECREF(ignore);
        return 0;
    }
    int r = ignore_tables(f, ignore);
    Py_DECREF(ignore);          /* f->ign holds it */
    if (r < 0)
        return -1;
    if (!f->ign_usable)
        return 1;
    if (PySet_GET_SIZE(f->ign_exact)) {
        /* the key is the address itself for IPv4 (and a /128 IPv6 prefix) */
        PyObject *addr = v4 || f->v6len >= 128 ? Py_NewRef(key) : PyBytes_FromStringAndSize((const char *)src, 16);
        r = addr ? PySet_Contains(f->ign_exact, addr) : -1;
        Py_XDECREF(addr);
        if (r)
            return r;
    }
    if (v4) {
        if (!(f->ign_pre4[src[0] >> 3] & (1u << (src[0] & 7))))
            return 0;
        /* PrefixSet._v4: ((mask, set of masked network ints), ...), one per prefix length
         * (whole addresses excluded: the exact set answered for them) */
        PyObject *table = f->ign_v4;
        unsigned long a = (unsigned long)src[0] << 24 | (unsigned long)src[1] << 16 | (unsigned long)src[2] << 8 | src[3];
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(table) && !r; i++) {
            PyObject *entry = PyTuple_GET_ITEM(table, i);
            if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2)
                return 1;
            unsigned long m = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(entry, 0));
            if (m == (unsigned long)-1 && PyErr_Occurred())
                return -1;
            PyObject *net = PyLong_FromUnsignedLong(a & m);
            r = net ? PySequence_Contains(PyTuple_GET_ITEM(entry, 1), net) : -1;
            Py_XDECREF(net);
        }
        return r;
    }
    if (f->ign_pre6 != Py_None) {
        PyObject *head = PyBytes_FromStringAndSize((const char *)src, f->ign_pre6_bytes);
        r = head ? PySet_Contains(f->ign_pre6, head) : -1;
        Py_XDECREF(head);
        if (r <= 0)
            return r;
    }
    return in_v6_networks(f->ign_v6, src);
}

/* 1: an FTP expectation is pending (let Python match it), 0: none, -1: error */
static int expectations_pending(FastPath *f) {
    PyObject *exp = PyObject_GetAttr(f->engine, str_expectations);
    if (!exp)
        return -1;
    int r = 0;
    if (exp != Py_None) {
        if (Py_TYPE(exp) != f->exp_type) {
            Py_XSETREF(f->exp_type, (PyTypeObject *)Py_NewRef(Py_TYPE(exp)));
            f->exp_pending_at = slot_offset(f->exp_type, str_pending);
        }
        PyObject *live = f->exp_pending_at >= 0 ? slot_get(exp, f->exp_pending_at) : NULL;
        if (live && PyDict_CheckExact(live)) {  /* the table's live dict (LockedExpectations) */
            Py_DECREF(exp);
            return PyDict_GET_SIZE(live) != 0;
        }
        PyObject *pending = PyObject_GetAttr(exp, str_pending);
        r = !pending ? -1 : PyDict_CheckExact(pending) ? PyDict_GET_SIZE(pending) != 0 : PyObject_IsTrue(pending);
        Py_XDECREF(pending);
    }
    Py_DECREF(exp);
    return r;
}

static PyObject *call_fallback(FastPath *f, PyObject *raw, PyObject *now) {
    f->fallbacks++;
    PyObject *args[2] = {raw, now};
    return PyObject_Vectorcall(f->fallback, args, 2, NULL);
}

/* Would the ports of a tracked source (a dict) certainly not react to this hit, and need no
 * pruning? Sets *contains. 1 yes, 0 no (let Python decide), -1 error. */
static int dict_ports_quiet(FastPath *f, PyObject *ports, PyObject *pk, double now, int *contains) {
    int c = PyDict_Contains(ports, pk);
    if (c < 0)
        return -1;
    *contains = c;
    if (!f->window_ports)
        return 1;            /* no window policy: no pruning, no window reaction */
    Py_ssize_t len = PyDict_GET_SIZE(ports);
    Py_ssize_t upper = c ? len : (len >= f->port_cap ? len : len + 1);
    if (upper >= f->window_ports)
        return 0;
    /* nothing may be stale: then nothing is after this hit either, and Python prunes nothing */
    double oldest = now - f->window;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(ports, &pos, &k, &v)) {
        double t = PyFloat_AsDouble(v);
        if (t == -1.0 && PyErr_Occurred())
            return -1;
        if (t < oldest)
            return 0;
    }
    return 1;
}

static PyObject *process_raw(FastPath *f, PyObject *raw, PyObject *nowobj);

static PyObject *FastPath_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError, "process_raw(raw, now) takes no keyword arguments");
        return NULL;
    }
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "process_raw expected 2 arguments, got %zd", nargs);
        return NULL;
    }
    if (!((FastPath *)self)->engine) {
        PyErr_SetString(PyExc_TypeError, "FastPath: not initialised");
        return NULL;
    }
    return process_raw((FastPath *)self, args[0], args[1]);
}

static PyObject *FastPath_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    FastPath *f = (FastPath *)PyType_GenericNew(type, args, kw);
    if (f)
        f->vectorcall = FastPath_vectorcall;
    return (PyObject *)f;
}

static PyObject *process_raw(FastPath *f, PyObject *raw, PyObject *nowobj) {
    if (!PyBytes_CheckExact(raw) || !(PyFloat_CheckExact(nowobj) || PyLong_CheckExact(nowobj)))
        return call_fallback(f, raw, nowobj);
    double now = PyFloat_AsDouble(nowobj);
    if (now == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return call_fallback(f, raw, nowobj);
    }
    if (PyLong_CheckExact(nowobj)) {
        /* an int clock: exact in a double only within +-2**53, else Python's int arithmetic */
        long long ll = PyLong_AsLongLong(nowobj);
        if (ll == -1 && PyErr_Occurred())
            PyErr_Clear();
        if (ll > (1LL << 53) || ll < -(1LL << 53))
            return call_fallback(f, raw, nowobj);
    }

    /* -- 1. decode()'s fast shapes, with its checks */
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    const unsigned char *src;
    unsigned proto, dport, flags = 0;
    int v4;
    if (n < NFS_V4UDP_MIN)
        return call_fallback(f, raw, nowobj);
    if (p[0] == NFS_IP4_NO_OPTIONS) {
        const unsigned char *t = p + NFS_IP4_HDR;      /* the transport header */
        unsigned tot = be16(p + NFS_IP4_TOTLEN_AT), frag = be16(p + NFS_IP4_FRAG_AT);
        proto = p[NFS_IP4_PROTO_AT];
        if (frag & NFS_IP4_FRAG_BITS || tot > n)
            return call_fallback(f, raw, nowobj);
        if (proto == NFS_PROTO_TCP) {
            if (n < NFS_V4TCP_MIN || tot < NFS_V4TCP_MIN)
                return call_fallback(f, raw, nowobj);
            unsigned doff = (t[NFS_TCP_DOFF_AT] >> 4) << 2;
            if (doff < NFS_TCP_HDR || doff > tot - NFS_IP4_HDR)
                return call_fallback(f, raw, nowobj);
            flags = t[NFS_TCP_FLAGS_AT];
        } else if (proto == NFS_PROTO_UDP) {
            unsigned ulen = be16(t + NFS_UDP_LEN_AT);
            if (tot < NFS_V4UDP_MIN || ulen < NFS_UDP_HDR || ulen > tot - NFS_IP4_HDR)
                return call_fallback(f, raw, nowobj);
        } else {
            return call_fallback(f, raw, nowobj);
        }
        src = p + NFS_IP4_SRC_AT;
        dport = be16(t + NFS_TCP_DPORT_AT);     /* == NFS_UDP_DPORT_AT */
        v4 = 1;
    } else if ((p[0] >> 4) == 6 && n >= NFS_V6UDP_MIN) {
        const unsigned char *t = p + NFS_IP6_HDR;
        unsigned pl = be16(p + NFS_IP6_PLEN_AT);
        proto = p[NFS_IP6_NEXT_AT];
        if (pl > n - NFS_IP6_HDR)
            return call_fallback(f, raw, nowobj);
        if (proto == NFS_PROTO_TCP) {
            if (n < NFS_V6TCP_MIN || pl < NFS_TCP_HDR)
                return call_fallback(f, raw, nowobj);
            unsigned doff = (t[NFS_TCP_DOFF_AT] >> 4) << 2;
            if (doff < NFS_TCP_HDR || doff > pl)
                return call_fallback(f, raw, nowobj);
            flags = t[NFS_TCP_FLAGS_AT];
        } else if (proto == NFS_PROTO_UDP) {
            unsigned ulen = be16(t + NFS_UDP_LEN_AT);
            if (pl < NFS_UDP_HDR || ulen < NFS_UDP_HDR || ulen > pl)
                return call_fallback(f, raw, nowobj);
        } else {
            return call_fallback(f, raw, nowobj);
        }
        src = p + NFS_IP6_SRC_AT;
        dport = be16(t + NFS_TCP_DPORT_AT);
        v4 = 0;
    } else {
        return call_fallback(f, raw, nowobj);
    }
    unsigned li = proto == NFS_PROTO_TCP ? flags : 256;   /* index into the label tables */

    /* the key: the IPv4 address, or the IPv6 address masked to the configured prefix */
    unsigned char kb[16];
    Py_ssize_t klen = v4 ? 4 : 16;
    memcpy(kb, src, klen);
    if (!v4 && f->v6len < 128) {
        int q = f->v6len / 8, rem = f->v6len % 8;
        if (rem)
            kb[q++] &= (unsigned char)(0xFF << (8 - rem));
        memset(kb + q, 0, 16 - q);
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)kb, klen);
    if (!key)
        return NULL;
    PyObject *result = NULL;

    /* -- 2. the ignore set (exact addresses, the prefilter of the rest), FTP expectations */
    int r = maybe_ignored(f, src, v4, key);
    if (!r && proto == NFS_PROTO_TCP)
        r = expectations_pending(f);
    if (r) {
        result = r < 0 ? NULL : call_fallback(f, raw, nowobj);
        goto done;
    }

    /* -- 3. blocked: DROP while the block lasts; an ended one is Python's to delete */
    PyObject *until = PyDict_GetItemWithError(f->blocked, key);   /* borrowed */
    if (until) {
        double u = PyFloat_AsDouble(until);
        if (u == -1.0 && PyErr_Occurred())
            goto done;
        if (now < u) {
            if (bump(f->counts, NFS_ACTION_DROP) < 0)
                goto done;
            f->handled++;
            result = Py_NewRef(f->lean_drop[proto != NFS_PROTO_TCP]);
        } else {
            result = call_fallback(f, raw, nowobj);
        }
        goto done;
    } else if (PyErr_Occurred()) {
        goto done;
    }

    /* -- 4. record the hit when no policy can react */
    long pk = (long)proto << 16 | dport;
    int instant = f->instant[li];
    Source *st = (Source *)PyDict_GetItemWithError(f->states, key);   /* borrowed */
    if (!st && PyErr_Occurred())
        goto done;
    if (st && Py_TYPE(st) != &SourceType) {      /* not ours (restored by Python code?) */
        result = call_fallback(f, raw, nowobj);
        goto done;
    }
    if (!st || now - st->last > f->window) {
        /* new, or quiet for longer than the window: hits = nports = 1 */
        if (instant || 1.0 > f->trigger || (f->window_ports && 1 >= f->window_ports)) {
            result = call_fallback(f, raw, nowobj);
            goto done;
        }
        PyObject *pko = PyLong_FromLong(pk);
        if (!pko)
            goto done;
        PyObject *one = PyTuple_GET_ITEM(f->one_labels, li);
        if (!st) {
            st = (Source *)PyType_GenericNew(&SourceType, NULL, NULL);
            if (!st) {
                Py_DECREF(pko);
                goto done;
            }
            st->seen = 0;
            st->hits = 1;
            st->ports = pko;
            Py_INCREF(one);
            st->labels = one;
            st->protos = proto == NFS_PROTO_TCP ? 1 : 2;
            st->first = st->last = now;
            int err = PyDict_SetItem(f->states, key, (PyObject *)st);
            Py_DECREF(st);          /* the dict holds it now */
            if (err < 0)
                goto done;
            PyObject *res = PyObject_CallMethodOneArg(f->clock, str_append, key);
            if (!res)
                goto done;
            Py_DECREF(res);
            Py_ssize_t ns = PyDict_GET_SIZE(f->states);
            if (ns > f->max_sources) {
                res = PyObject_CallMethodNoArgs(f->engine, str_evict);
            } else {
                Py_ssize_t nc = PyObject_Length(f->clock);
                if (nc < 0)
                    goto done;
                res = nc > 2 * ns + 64 ? PyObject_CallMethodNoArgs(f->engine, str_compact) : Py_NewRef(Py_None);
            }
            if (!res)
                goto done;
            Py_DECREF(res);
        } else {
            st->seen = 1;
            st->hits = 1;
            Py_SETREF(st->ports, pko);
            Py_INCREF(one);
            Py_SETREF(st->labels, one);
            st->protos = proto == NFS_PROTO_TCP ? 1 : 2;
            st->first = st->last = now;
        }
    } else {
        /* tracked, within the window */
        long long hits = st->hits + 1;
        if (instant || (double)hits > f->trigger) {
            result = call_fallback(f, raw, nowobj);
            goto done;
        }
        PyObject *label = PyTuple_GET_ITEM(f->labels, li);
        PyObject *ports = st->ports;
        PyObject *pko = NULL, *nowf = NULL;   /* made only when stored (a flood repeats one port) */
        int single = PyLong_CheckExact(ports), same = 0, contains = 0;
        if (single) {
            long pv = PyLong_AsLong(ports);
            if (pv == -1 && PyErr_Occurred())
                PyErr_Clear();      /* beyond a long: not this port key */
            else
                same = pv == pk;
            long nports = same || f->port_cap <= 1 ? 1 : 2;
            if (f->window_ports && nports >= f->window_ports) {
                result = call_fallback(f, raw, nowobj);
                goto done;
            }
        } else if (PyDict_CheckExact(ports)) {
            if (!(pko = PyLong_FromLong(pk)))
                goto done;
            int q = dict_ports_quiet(f, ports, pko, now, &contains);
            if (q < 0)
                goto hit_fail;
            if (!q) {
                Py_DECREF(pko);
                result = call_fallback(f, raw, nowobj);
                goto done;
            }
        } else {
            result = call_fallback(f, raw, nowobj);
            goto done;
        }
        /* no reaction: update the record as Python's body does */
        int has = PySequence_Contains(st->labels, label);
        if (has < 0)
            goto hit_fail;
        if (!has) {
            PyObject *more = PyTuple_Pack(1, label);
            PyObject *joined = more ? PySequence_Concat(st->labels, more) : NULL;
            Py_XDECREF(more);
            if (!joined)
                goto hit_fail;
            Py_SETREF(st->labels, joined);
        }
        st->seen = 1;
        st->hits = hits;
        st->protos |= proto == NFS_PROTO_TCP ? 1 : 2;
        if (single) {
            if (!same) {
                if (!(pko = PyLong_FromLong(pk)))
                    goto hit_fail;
                if (f->port_cap > 1) {
                    PyObject *d = PyDict_New();
                    PyObject *lastf = d ? PyFloat_FromDouble(st->last) : NULL;
                    nowf = lastf ? PyFloat_FromDouble(now) : NULL;
                    if (!nowf || PyDict_SetItem(d, ports, lastf) < 0 || PyDict_SetItem(d, pko, nowf) < 0) {
                        Py_XDECREF(lastf);
                        Py_XDECREF(d);
                        goto hit_fail;
                    }
                    Py_DECREF(lastf);
                    Py_SETREF(st->ports, d);
                } else {
                    Py_INCREF(pko);
                    Py_SETREF(st->ports, pko);
                }
            }
        } else {
            if (contains) {
                if (PyDict_DelItem(ports, pko) < 0)
                    goto hit_fail;
            } else if (PyDict_GET_SIZE(ports) >= f->port_cap) {
                Py_ssize_t pos = 0;
                PyObject *k0, *v0;
                if (PyDict_Next(ports, &pos, &k0, &v0)) {
                    Py_INCREF(k0);
                    int err = PyDict_DelItem(ports, k0);
                    Py_DECREF(k0);
                    if (err < 0)
                        goto hit_fail;
                }
            }
            if (!(nowf = PyFloat_FromDouble(now)) || PyDict_SetItem(ports, pko, nowf) < 0)
                goto hit_fail;
        }
        st->last = now;
        Py_XDECREF(pko);
        Py_XDECREF(nowf);
        goto counted;
    hit_fail:
        Py_XDECREF(pko);
        Py_XDECREF(nowf);
        goto done;
    }
counted:
    if (bump(f->counts, NFS_ACTION_COUNT) < 0)
        goto done;
    f->handled++;
    result = Py_NewRef(f->lean_count[proto != NFS_PROTO_TCP]);
done:
    Py_DECREF(key);
    return result;
}

static PyMemberDef FastPath_members[] = {
    {"handled", T_ULONGLONG, offsetof(FastPath, handled), READONLY, "packets decided here"},
    {"fallbacks", T_ULONGLONG, offsetof(FastPath, fallbacks), READONLY, "packets handed to the Python body"},
    {NULL}
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nfsentry._fastpath.FastPath",
    .tp_doc = "process_raw(raw, now): the common cases in C, the rest through the Python body.",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(FastPath, vectorcall),
    .tp_new = FastPath_new,
    .tp_init = (initproc)FastPath_init,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_traverse = (traverseproc)FastPath_traverse,
    .tp_clear = (inquiry)FastPath_clear,
    .tp_call = PyVectorcall_Call,
    .tp_members = FastPath_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "nfsentry._fastpath",
    "Compiled common cases of nfsentry's engine (see nfsentry/engine.py for the rules).", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&SourceType) < 0 || PyType_Ready(&FastPathType) < 0)
        return NULL;
#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return NULL
    INTERN(str_ignore, "ignore");
    INTERN(str_exact, "exact");
    INTERN(str_expectations, "expectations");
    INTERN(str_pending, "pending");
    INTERN(str_v4, "_v4");
    INTERN(str_v6, "_v6");
    INTERN(str_pre4, "pre4");
    INTERN(str_pre6, "pre6");
    INTERN(str_version, "version");
    INTERN(str_pre6_bytes, "pre6_bytes");
    INTERN(str_evict, "_evict");
    INTERN(str_compact, "_compact_clock");
    INTERN(str_append, "append");
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&SourceType);
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "Source", (PyObject *)&SourceType) < 0 ||
        PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
