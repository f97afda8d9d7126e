-- 005_worker_node.sql - the node a job ran on (job.worker.node).
-- The name of the jobpoold (--node-name) whose worker ran the attempt; NULL
-- for attempts recorded before this column existed.
ALTER TABLE jobs ADD COLUMN worker_node TEXT;
