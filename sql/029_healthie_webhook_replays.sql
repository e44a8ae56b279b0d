-- Replayed Healthie webhook deliveries (issue 21). Healthie signs a delivery's method,
-- path, query, body digest and length, but no time and no delivery id
-- (../shared/healthie/HEALTHIE_API.md §4): the same signed bytes can be sent again at any
-- time, by Healthie repeating itself or by anyone who saw them. Every delivery is kept in
-- healthie_webhook_events with the hash of its body (rows are never removed), so a repeat
-- is recognised: while an identical one waits it collapses into it (009's unique index),
-- and one arriving within the replay window of the last identical delivery waits out that
-- window (src/store/healthieSync.ts enqueueWebhook): at most one re-fetch from Healthie per
-- window, however often the bytes come. This index finds the last identical delivery.
CREATE INDEX healthie_webhook_body ON healthie_webhook_events (org_id, body_hash);
