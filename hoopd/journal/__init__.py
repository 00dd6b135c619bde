"""Session journals: every request and response, in msgpack segments with a hash chain.

Parts: ``config`` ([journal] section), ``records`` (file format, names, hashing),
``writer`` (JournalWriter service), ``stage`` (JournalStage on the wire), ``reader``,
``verify``, ``render`` and ``cli`` (``hoopd journal ...``), ``view`` (for the control plane).

Record schema (format v1). Every record: ``ts`` (UTC timestamp), ``node``, ``kind``,
``h`` (chain hash, last key). Session records add ``session`` and ``seq`` (1, 2, ...
per session). ``stmt`` numbers a session's statements; results, errors, notices and
COPY records name the statement they answer (``part``: the index within a
multi-statement simple query).

- segment: v, segment, prev_segment, prev (hash), keyed, key_id, gap (why the previous
  segment ended early) -- the first record of every file
- segment_end: records; retention: deleted (segment names), retention (seconds)
- session_start: user, groups, source, connection, level, peer, application_name, tls,
  protocol, started
- statement: stmt, op = query (text, parts) | parse (name, text, param_types) |
  bind (portal, name, text, params, result_formats, cut) | execute (portal, max_rows,
  name, text) | close (target, name) | call (oid, args, result_format, cut) | malformed
  (type, problem, raw). Values: text as str (bytes if not UTF-8), binary as bytes,
  NULL as nil; ``cut`` lists [index, full size] of values cut at max_value_bytes.
- rows: stmt, part, first, rows -- a chunk of a large result, before its result record
- result: stmt, part, columns, types, rows, rows_total, truncated, chunks, tag, us
  (duration in microseconds), and empty / suspended / failed; for a FunctionCall: value
- error, notice: stmt, part, severity, sqlstate, message, detail, hint, position, where,
  schema, table, column, constraint, us
- copy: stmt, direction (in | out | both), format, bytes, messages, rows, data (up to
  max_copy_bytes), truncated, failed
- notification: pid, channel, payload
- denied: stmt (when the statement was recorded) or the statement's fields; sqlstate,
  message, detail, hint
- session_end: reason, duration_us, statements, errors, denied, rows, bytes_in, bytes_out
- admin: action, by, target_session, ... (written by the control plane)

Readers show kinds they do not know generically; later kinds (policy decisions,
approvals) go into a session's sequence with ``JournalStage.record``.
"""
