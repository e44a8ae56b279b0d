-- A reference search by an absolute URL (another server's resource, a canonical such as
-- QuestionnaireResponse.questionnaire) matches rows that name no local target by their
-- reference text: an index on that text, for those rows only, keeps it a probe.
CREATE INDEX search_references_url ON search_references (param, org_id, resource_type, reference, id)
  INCLUDE (clinical_time) WHERE target_id IS NULL;
