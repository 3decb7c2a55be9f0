-- The schema of Undertow's last hand-written migration (version 3), sqlite; generated from that release's tables.

CREATE TABLE alerts (
	id VARCHAR(64) NOT NULL, 
	model_id VARCHAR(200) NOT NULL, 
	version VARCHAR(200) NOT NULL, 
	type VARCHAR(100) NOT NULL, 
	feature VARCHAR(200), 
	severity VARCHAR(20), 
	event_ts FLOAT NOT NULL, 
	cloudevent TEXT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_alerts_model ON alerts (model_id, event_ts);

CREATE TABLE concept_state (
	model_id VARCHAR(200) NOT NULL, 
	version VARCHAR(200) NOT NULL, 
	labels BIGINT NOT NULL, 
	error_sum FLOAT NOT NULL, 
	in_episode BOOLEAN NOT NULL, 
	episode_started_label BIGINT, 
	episodes INTEGER NOT NULL, 
	silenced_alarms BIGINT NOT NULL, 
	calm_evaluations INTEGER NOT NULL, 
	detectors TEXT NOT NULL, 
	PRIMARY KEY (model_id, version)
);

CREATE TABLE consumer_offsets (
	group_id VARCHAR(200) NOT NULL, 
	topic VARCHAR(250) NOT NULL, 
	partition INTEGER NOT NULL, 
	next_offset BIGINT NOT NULL, 
	PRIMARY KEY (group_id, topic, partition)
);

CREATE TABLE dead_letter_stats (
	source_topic VARCHAR(250) NOT NULL, 
	count BIGINT NOT NULL, 
	last_error TEXT, 
	PRIMARY KEY (source_topic)
);

CREATE TABLE drift_state (
	model_id VARCHAR(200) NOT NULL, 
	version VARCHAR(200) NOT NULL, 
	next_window INTEGER NOT NULL, 
	rows INTEGER NOT NULL, 
	since_evaluation INTEGER NOT NULL, 
	buffer BLOB NOT NULL, 
	buffer_ts BLOB NOT NULL, 
	window_start_ts FLOAT, 
	late_events BIGINT NOT NULL, 
	episodes TEXT NOT NULL, 
	PRIMARY KEY (model_id, version)
);

CREATE TABLE join_pending (
	model_id VARCHAR(200) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	event_id VARCHAR(200) NOT NULL, 
	version VARCHAR(200), 
	ts FLOAT NOT NULL, 
	payload TEXT NOT NULL, 
	PRIMARY KEY (model_id, kind, event_id)
);

CREATE INDEX ix_join_pending_age ON join_pending (model_id, kind, ts);

CREATE TABLE join_stats (
	model_id VARCHAR(200) NOT NULL, 
	pending_predictions BIGINT NOT NULL, 
	pending_labels BIGINT NOT NULL, 
	joined BIGINT NOT NULL, 
	expired_predictions BIGINT NOT NULL, 
	expired_labels BIGINT NOT NULL, 
	evicted_predictions BIGINT NOT NULL, 
	evicted_labels BIGINT NOT NULL, 
	watermark_ts FLOAT, 
	PRIMARY KEY (model_id)
);

CREATE TABLE labelled_pairs (
	model_id VARCHAR(200) NOT NULL, 
	seq BIGINT NOT NULL, 
	event_id VARCHAR(200) NOT NULL, 
	version VARCHAR(200), 
	prediction_ts FLOAT NOT NULL, 
	label_ts FLOAT NOT NULL, 
	features TEXT NOT NULL, 
	prediction TEXT NOT NULL, 
	label TEXT NOT NULL, 
	error FLOAT NOT NULL, 
	score_loss FLOAT, 
	PRIMARY KEY (model_id, seq)
);

CREATE TABLE model_stats (
	model_id VARCHAR(200) NOT NULL, 
	predictions BIGINT NOT NULL, 
	labels BIGINT NOT NULL, 
	duplicates BIGINT NOT NULL, 
	first_event_ts FLOAT, 
	last_event_ts FLOAT, 
	PRIMARY KEY (model_id)
);

CREATE TABLE model_versions (
	model_id VARCHAR(200) NOT NULL, 
	version VARCHAR(200) NOT NULL, 
	stage VARCHAR(20) NOT NULL, 
	created_at FLOAT NOT NULL, 
	profile TEXT NOT NULL, 
	drift_config TEXT NOT NULL, 
	feature_schema TEXT NOT NULL, 
	model_card TEXT NOT NULL, 
	artifact_path TEXT, 
	artifact_sha256 VARCHAR(64), 
	data_sha256 VARCHAR(64), 
	baseline_error_mean FLOAT, 
	baseline_error_std FLOAT, 
	baseline_errors TEXT, 
	PRIMARY KEY (model_id, version)
);

CREATE INDEX ix_model_versions_stage ON model_versions (model_id, stage);

CREATE TABLE outbox (
	id INTEGER NOT NULL, 
	topic VARCHAR(250) NOT NULL, 
	"key" BLOB, 
	value BLOB, 
	headers TEXT NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE retrain_requests (
	request_id VARCHAR(64) NOT NULL, 
	model_id VARCHAR(200) NOT NULL, 
	version VARCHAR(200) NOT NULL, 
	status VARCHAR(20) NOT NULL, 
	created_ts FLOAT NOT NULL, 
	alert_ids TEXT NOT NULL, 
	cloudevent TEXT NOT NULL, 
	outcome TEXT, 
	PRIMARY KEY (request_id)
);

CREATE INDEX ix_retrain_requests_model ON retrain_requests (model_id, status);

CREATE TABLE schema_version (
	version INTEGER NOT NULL, 
	description VARCHAR(200) NOT NULL, 
	applied_at FLOAT NOT NULL, 
	PRIMARY KEY (version)
);

CREATE TABLE seen_events (
	kind VARCHAR(16) NOT NULL, 
	model_id VARCHAR(200) NOT NULL, 
	event_id VARCHAR(200) NOT NULL, 
	topic VARCHAR(250) NOT NULL, 
	partition INTEGER NOT NULL, 
	"offset" BIGINT NOT NULL, 
	PRIMARY KEY (kind, model_id, event_id)
);

CREATE INDEX ix_seen_events_position ON seen_events (topic, partition, "offset");

CREATE TABLE window_results (
	model_id VARCHAR(200) NOT NULL, 
	version VARCHAR(200) NOT NULL, 
	window_index INTEGER NOT NULL, 
	feature VARCHAR(200) NOT NULL, 
	start_ts FLOAT NOT NULL, 
	end_ts FLOAT NOT NULL, 
	n INTEGER NOT NULL, 
	psi FLOAT NOT NULL, 
	ks_statistic FLOAT, 
	ks_pvalue FLOAT, 
	chi2_statistic FLOAT NOT NULL, 
	chi2_pvalue FLOAT NOT NULL, 
	missing_share FLOAT NOT NULL, 
	severity VARCHAR(20) NOT NULL, 
	PRIMARY KEY (model_id, version, window_index, feature)
);

INSERT INTO schema_version (version, description, applied_at) VALUES (1, 'spine', 0), (2, 'data drift', 0), (3, 'concept drift', 0);
