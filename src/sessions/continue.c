/*
 * continue.c — "may this session continue?"
 *
 * Sessions preserve execution; mandates preserve legitimacy. Every path that moves a
 * session forward (an append, a resume, any move out of `inert`) asks this one
 * function first, inside the same transaction as the write it guards, so the answer
 * cannot go stale between the check and the write.
 *
 * A session without a mandate may always continue. A session's `mandate` is only a
 * handle: whether it holds (it and every ancestor active, none past its deadline) is
 * the mandate layer's answer, never the session's.
 */
#include "internal.h"

ch_status ch__session_may_continue(ch_db *db, ch_store *w, const ch_session_rec *s, ch_err *e)
{
    (void)w;
    if (s->mandate[0] == '\0')
        return CH_OK;
    return ch__mandate_may_continue(db, s->tenant, s->mandate, e);
}
