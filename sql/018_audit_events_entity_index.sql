-- AuditEvents are searched through the search index (entity, patient, agent...), never
-- through audit_events.entity_what: its GIN index only cost every audited read an insert.
DROP INDEX IF EXISTS audit_events_entity;
