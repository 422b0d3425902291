-- Schema version 9 -> 10: an empty artifactType is a missing one. Until version 10 a
-- manifest pushed with `"artifactType": ""` kept it, and the referrers API listed it so,
-- where the distribution spec asks for the config's media type (an image) or no
-- artifactType at all (an index). The schema is unchanged; the rows are set right.
UPDATE manifests
   SET artifact_type = CASE WHEN json_valid(CAST(payload AS TEXT))
                            THEN NULLIF(json_extract(CAST(payload AS TEXT), '$.config.mediaType'), '')
                       END
 WHERE artifact_type = '';
