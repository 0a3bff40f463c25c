package transit

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// A route is one transit path: its pattern after the mount prefix
// (segments, ":x" naming a variable one), the methods it takes, the
// operation the audit log names its refusals with, and its handler. The
// table is the API (docs/transit.md).
type route struct {
	pattern string
	methods string // space-separated; "GET" also answers LIST where list is set
	op      string
	h       func(*request) (any, error)
	list    bool // GET ?list=true and LIST
}

var routes = []route{
	{pattern: "keys", methods: "GET", op: "list", h: listKeys, list: true},
	{pattern: "keys/:name", methods: "GET", op: "info", h: readKey},
	{pattern: "keys/:name", methods: "POST PUT", op: "generate", h: createKey},
	{pattern: "keys/:name", methods: "DELETE", op: "destroy", h: deleteKey},
	{pattern: "keys/:name/config", methods: "POST PUT", op: "set-lifecycle", h: configKey},
	{pattern: "keys/:name/rotate", methods: "POST PUT", op: "rotate", h: rotateKey},
	{pattern: "keys/:name/trim", methods: "POST PUT", op: "set-lifecycle", h: trimKey},
	{pattern: "keys/:name/import", methods: "POST PUT", op: "unwrap", h: importKey},
	{pattern: "encrypt/:name", methods: "POST PUT", op: "encrypt", h: encrypt},
	{pattern: "decrypt/:name", methods: "POST PUT", op: "decrypt", h: decrypt},
	{pattern: "rewrap/:name", methods: "POST PUT", op: "rewrap", h: rewrap},
	{pattern: "datakey/:plaintext/:name", methods: "POST PUT", op: "data-key", h: datakey},
	{pattern: "sign/:name", methods: "POST PUT", op: "sign", h: sign},
	{pattern: "sign/:name/:hash", methods: "POST PUT", op: "sign", h: sign},
	{pattern: "verify/:name", methods: "POST PUT", op: "verify", h: verify},
	{pattern: "verify/:name/:hash", methods: "POST PUT", op: "verify", h: verify},
	{pattern: "hmac/:name", methods: "POST PUT", op: "mac", h: hmacOp},
	{pattern: "hmac/:name/:hash", methods: "POST PUT", op: "mac", h: hmacOp},
	{pattern: "hash", methods: "POST PUT", op: "hash", h: hashOp},
	{pattern: "hash/:hash", methods: "POST PUT", op: "hash", h: hashOp},
	{pattern: "random", methods: "POST PUT", op: "random", h: randomOp},
	{pattern: "random/:a", methods: "POST PUT", op: "random", h: randomOp},
	{pattern: "random/:source/:bytes", methods: "POST PUT", op: "random", h: randomOp},
	{pattern: "wrapping_key", methods: "GET", op: "public-key", h: wrappingKey},
	{pattern: "export/:type/:name", methods: "GET", op: "export", h: export},
	{pattern: "export/:type/:name/:version", methods: "GET", op: "export", h: export},
}

// match returns the routes whose pattern fits path's segments, and the
// variables of the first.
func match(segs []string) ([]*route, map[string]string) {
	var found []*route
	var vars map[string]string
	for i := range routes {
		r := &routes[i]
		ps := strings.Split(r.pattern, "/")
		if len(ps) != len(segs) {
			continue
		}
		v := map[string]string{}
		ok := true
		for j, p := range ps {
			switch {
			case strings.HasPrefix(p, ":"):
				if segs[j] == "" {
					ok = false
				}
				v[p[1:]] = segs[j]
			case p != segs[j]:
				ok = false
			}
			if !ok {
				break
			}
		}
		if ok {
			if vars == nil {
				vars = v
			}
			found = append(found, r)
		}
	}
	return found, vars
}

// request is one transit request being served.
type request struct {
	ctx  context.Context
	c    *clientConn
	op   string // the audit's name of the operation
	vars map[string]string
	// body is the JSON object of the body (nil: none).
	body   map[string]any
	query  map[string][]string
	method string
}

// apiError is what a transit request is answered with when it fails: an
// HTTP status and Vault's error messages. front: the front refused it
// itself (it is recorded through Session.Refuse); otherwise the core
// refused it, and recorded that.
type apiError struct {
	code  int
	msg   string
	st    wire.Status
	front bool
	// opName is the operation the audit log names a refusal with.
	opName string
}

func (e *apiError) Error() string { return e.msg }

// badRequest is a refusal of the front's own: 400.
func badRequest(format string, args ...any) error {
	return &apiError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...), st: wire.Status_STATUS_INVALID_ARGUMENT, front: true}
}

// notOffered refuses a parameter or path transit has and keywarden does
// not offer (docs/transit.md).
func notOffered(format string, args ...any) error {
	return &apiError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...) + ": not offered by keywarden (see its docs/transit.md)",
		st: wire.Status_STATUS_UNIMPLEMENTED, front: true}
}

// httpStatus is the HTTP status Vault answers for what the core's status
// says: 400 for what the request asked that cannot be done, 403 for a
// caller who may not, 429 for a limit, 503 while the daemon cannot serve
// (sealed, or its audit log failing).
func httpStatus(st wire.Status) int {
	switch st {
	case wire.Status_STATUS_PERMISSION_DENIED:
		return http.StatusForbidden
	case wire.Status_STATUS_RESOURCE_EXHAUSTED:
		return http.StatusTooManyRequests
	case wire.Status_STATUS_UNAVAILABLE, wire.Status_STATUS_GENERATION_CHANGED:
		return http.StatusServiceUnavailable
	case wire.Status_STATUS_INTERNAL:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

// apiErrorOf turns an error of a handler into its answer.
func apiErrorOf(err error) *apiError {
	var ae *apiError
	var ce *coreError
	var nk errNoKey
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &nk):
		// Recorded by the core (the open it refused).
		return &apiError{code: http.StatusBadRequest, msg: "encryption key not found", st: wire.Status_STATUS_NOT_FOUND}
	case errors.As(err, &ce):
		msg := ce.msg
		if ce.status == wire.Status_STATUS_PERMISSION_DENIED {
			msg = "permission denied"
		}
		return &apiError{code: httpStatus(ce.status), msg: msg, st: ce.status}
	case errors.Is(err, errSession):
		return &apiError{code: http.StatusServiceUnavailable, msg: "the daemon is closing this connection", st: wire.Status_STATUS_UNAVAILABLE}
	}
	return &apiError{code: http.StatusInternalServerError, msg: "internal error", st: wire.Status_STATUS_INTERNAL, front: true}
}

// ServeHTTP answers one transit request.
func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, _ := r.Context().Value(connKey{}).(*clientConn)
	if c == nil {
		writeError(w, http.StatusForbidden, "permission denied")
		return
	}
	ae := f.serve(w, r, c)
	if ae == nil {
		return
	}
	if ae.front {
		err := c.ss.Refuse(r.Context(), c.id, server.Refusal{Op: ae.op(), Request: c.reqID(), Status: ae.st, Reason: ae.msg})
		if err != nil {
			f.log.Error("a refusal could not be recorded: the connection closes", "uid", c.id.UID, "pid", c.id.PID, "err", err)
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusServiceUnavailable, "the daemon cannot record this request")
			return
		}
	}
	if ae.msg == "" {
		writeError(w, ae.code)
		return
	}
	writeError(w, ae.code, ae.msg)
}

// op is the operation a refusal names; set by serve.
func (e *apiError) op() string {
	if e.opName == "" {
		return "request"
	}
	return e.opName
}

// serve decodes and runs r; nil when answered.
func (f *Front) serve(w http.ResponseWriter, r *http.Request, c *clientConn) (ae *apiError) {
	op := "request"
	defer func() {
		if ae != nil && ae.opName == "" {
			ae.opName = op
		}
	}()
	path := r.URL.Path
	if !strings.HasPrefix(path, f.cfg.Prefix) {
		return &apiError{code: http.StatusNotFound, msg: "unsupported path", st: wire.Status_STATUS_NOT_FOUND, front: true}
	}
	segs := strings.Split(strings.TrimSuffix(path[len(f.cfg.Prefix):], "/"), "/")
	rts, vars := match(segs)
	if len(rts) == 0 {
		return &apiError{code: http.StatusNotFound, msg: "unsupported path", st: wire.Status_STATUS_NOT_FOUND, front: true}
	}
	method := r.Method
	list := method == "LIST" || (method == http.MethodGet && r.URL.Query().Get("list") == "true")
	var rt *route
	var allowed []string
	for _, x := range rts {
		for m := range strings.FieldsSeq(x.methods) {
			allowed = append(allowed, m)
			if m == method && x.list == list || x.list && list && m == http.MethodGet {
				rt = x
			}
		}
		if x.list {
			allowed = append(allowed, "LIST")
		}
	}
	if rt == nil {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		return &apiError{code: http.StatusMethodNotAllowed, msg: fmt.Sprintf("unsupported operation %s on this path", method),
			st: wire.Status_STATUS_UNIMPLEMENTED, front: true}
	}
	op = rt.op
	if r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 {
		// A body must say its length: a chunked one is refused, and the
		// connection closed, so that no parser before this one can
		// disagree on where a request ends (with both Transfer-Encoding
		// and Content-Length, the request smuggling of RFC 9112, 6.3).
		w.Header().Set("Connection", "close")
		return &apiError{code: http.StatusLengthRequired, msg: "a request body needs a Content-Length; Transfer-Encoding is not accepted",
			st: wire.Status_STATUS_INVALID_ARGUMENT, front: true}
	}
	rq := &request{ctx: r.Context(), c: c, op: rt.op, vars: vars, query: r.URL.Query(), method: method}
	// The body is held, read and decoded, until the request is answered.
	hold := f.cfg.MaxBody
	if r.ContentLength >= 0 && r.ContentLength < hold {
		hold = r.ContentLength
	}
	if !f.holdBody(c.id.UID, hold) {
		w.Header().Set("Connection", "close")
		return &apiError{code: http.StatusTooManyRequests, msg: "too many request bodies of this user are being read at once",
			st: wire.Status_STATUS_RESOURCE_EXHAUSTED, front: true}
	}
	defer f.unholdBody(c.id.UID, hold)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, f.cfg.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			w.Header().Set("Connection", "close")
			return &apiError{code: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body over %d bytes", f.cfg.MaxBody),
				st: wire.Status_STATUS_RESOURCE_EXHAUSTED, front: true}
		}
		return &apiError{code: http.StatusBadRequest, msg: "the request body could not be read", st: wire.Status_STATUS_INVALID_ARGUMENT, front: true}
	}
	defer clear(body)
	if len(bytes.TrimSpace(body)) > 0 {
		if n, max := jsonValues(body), f.cfg.MaxBatch*valuesPerItem+valuesPerRequest; n > max {
			// Decoded, such a body would take many times its size.
			return &apiError{code: http.StatusBadRequest, msg: fmt.Sprintf("failed to parse JSON input: over %d values", max),
				st: wire.Status_STATUS_RESOURCE_EXHAUSTED, front: true}
		}
		if rq.body, err = decodeBody(body); err != nil {
			return &apiError{code: http.StatusBadRequest, msg: "failed to parse JSON input: " + err.Error(), st: wire.Status_STATUS_INVALID_ARGUMENT, front: true}
		}
	}
	if n, ok := rq.body["batch_input"].([]any); ok && len(n) > f.cfg.MaxBatch {
		return &apiError{code: http.StatusBadRequest, msg: fmt.Sprintf("batch_input of %d items: at most %d", len(n), f.cfg.MaxBatch),
			st: wire.Status_STATUS_RESOURCE_EXHAUSTED, front: true}
	}
	data, err := rt.h(rq)
	if err != nil {
		return apiErrorOf(err)
	}
	if br, ok := data.(batchReply); ok {
		writeData(w, br.code(), br.data)
		return nil
	}
	if data == nil {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	writeData(w, http.StatusOK, data)
	return nil
}

// A body holds at most valuesPerItem JSON values for each item of the
// largest batch, and valuesPerRequest more: every request of the API,
// with room for references, which the client chooses. Each value decoded
// is a Go value of its own (an empty object, a map): without this bound,
// a body of empty objects takes some thirty times its size.
const (
	valuesPerItem    = 32
	valuesPerRequest = 256
)

// jsonValues counts, without decoding, the values of the JSON text b that
// are in an object or an array (the commas, and the objects and arrays
// opened), outside strings.
func jsonValues(b []byte) int {
	n := 0
	inString, escaped := false, false
	for _, c := range b {
		switch {
		case escaped:
			escaped = false
		case inString:
			switch c {
			case '\\':
				escaped = true
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[' || c == ',':
			n++
		}
	}
	return n
}

// decodeBody decodes a JSON object, numbers kept as json.Number.
func decodeBody(b []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("data after the JSON object")
	}
	// null, as the Vault api client sends for no data, is no fields.
	return m, nil
}

// writeData answers with Vault's envelope of a response.
func writeData(w http.ResponseWriter, code int, data any) {
	var id [16]byte
	random.ReadAny(id[:])
	h := hex.EncodeToString(id[:])
	reqID := h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
	writeJSON(w, code, map[string]any{
		"request_id": reqID, "lease_id": "", "renewable": false, "lease_duration": 0,
		"data": data, "wrap_info": nil, "warnings": nil, "auth": nil, "mount_type": "transit",
	})
}

// writeError answers with Vault's error shape.
func writeError(w http.ResponseWriter, code int, msgs ...string) {
	if msgs == nil {
		msgs = []string{}
	}
	writeJSON(w, code, map[string]any{"errors": msgs})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"errors":["internal error"]}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
	clear(b)
}

// --- parameters ------------------------------------------------------------

// params are the fields of one request or one batch item.
type params map[string]any

func (p params) has(k string) bool { _, ok := p[k]; return ok }

func (p params) str(k string) (string, error) {
	switch v := p[k].(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case json.Number:
		return v.String(), nil
	case bool:
		return strconv.FormatBool(v), nil
	}
	return "", badRequest("%s: want a string", k)
}

func (p params) int(k string) (int64, error) {
	switch v := p[k].(type) {
	case nil:
		return 0, nil
	case json.Number:
		n, err := v.Int64()
		if err != nil {
			return 0, badRequest("%s: want an integer", k)
		}
		return n, nil
	case string:
		if v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, badRequest("%s: want an integer", k)
		}
		return n, nil
	}
	return 0, badRequest("%s: want an integer", k)
}

func (p params) bool(k string) (bool, error) {
	switch v := p[k].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		if v == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, badRequest("%s: want a boolean", k)
		}
		return b, nil
	case json.Number:
		return v.String() != "0", nil
	}
	return false, badRequest("%s: want a boolean", k)
}

// b64 decodes the standard base64 field k ("" and absent: empty).
func (p params) b64(k string) ([]byte, error) {
	s, err := p.str(k)
	if err != nil || s == "" {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, badRequest("%s: not valid base64", k)
	}
	return b, nil
}

// param returns field k of the body, or of the query for a GET.
func (rq *request) params() params {
	if rq.body != nil {
		return params(rq.body)
	}
	p := params{}
	for k, v := range rq.query {
		if len(v) > 0 {
			p[k] = v[0]
		}
	}
	return p
}

// items returns the batch items of the request, or the request's own
// fields as its single item; batch says which.
func (rq *request) items() (items []params, batch bool, err error) {
	p := rq.params()
	raw, ok := p["batch_input"]
	if !ok || raw == nil {
		return []params{p}, false, nil
	}
	arr, ok := raw.([]any)
	if !ok {
		return nil, false, badRequest("batch_input: want a list of objects")
	}
	if len(arr) == 0 {
		return nil, false, badRequest("missing batch input to process")
	}
	items = make([]params, len(arr))
	for i, x := range arr {
		m, ok := x.(map[string]any)
		if !ok {
			return nil, false, badRequest("batch_input[%d]: want an object", i)
		}
		items[i] = m
	}
	return items, true, nil
}

// name is the key's name in the path, which must be one the core takes.
func (rq *request) name() (string, error) {
	n := rq.vars["name"]
	if !validName(n) {
		return "", badRequest("invalid key name %q: 1 to 128 of A-Z a-z 0-9 _ . @ + -, starting with a letter, digit or underscore", n)
	}
	return n, nil
}

// validName is the core's rule for key names.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		case i > 0 && (c == '.' || c == '@' || c == '+' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// batchReply is the answer to a batch: one result per item, and whether
// some failed for the client's fault, or the daemon's.
type batchReply struct {
	data               map[string]any
	ok, user, internal bool
}

// code is Vault's status for a batch: 200 if any item succeeded, else
// 400 (500 if an item failed for the daemon's fault).
func (b batchReply) code() int {
	switch {
	case b.ok:
		return http.StatusOK
	case b.internal:
		return http.StatusInternalServerError
	case b.user:
		return http.StatusBadRequest
	}
	return http.StatusOK
}
